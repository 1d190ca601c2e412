// The page's script: formats the build's numbers, and loads the chart only when asked (a
// separate chunk, fetched on demand). `shout` in format.js is never used: esbuild drops it.
import "./style.css";
import { bytes, percent } from "./format.js";

const stats = { bundle: 2048, cached: 0.97 };

document.querySelector("#stats").textContent =
  `bundle ${bytes(stats.bundle)}, ${percent(stats.cached)} of builds served from the cache`;

document.querySelector("#chart").addEventListener("click", async () => {
  const { draw } = await import("./chart.js");
  draw(document.querySelector("#canvas"), [3, 1, 4, 1, 5, 9, 2, 6]);
});
