// A small static server for dist/: listens on $PORT (default 8080), serves /healthz, files
// with their content type, and index.html for /. No dependencies beyond Node.js itself.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";

const root = process.env.DIST ?? join(import.meta.dirname, "dist");
const port = Number(process.env.PORT ?? 8080);
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
};

const server = createServer(async (req, res) => {
  const path = new URL(req.url, "http://localhost").pathname;
  if (path === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    return;
  }
  const file = normalize(path === "/" ? "/index.html" : path);
  if (file.includes("..")) {
    res.writeHead(400).end();
    return;
  }
  try {
    const body = await readFile(join(root, file));
    res.writeHead(200, {
      "content-type": types[extname(file)] ?? "application/octet-stream",
      "x-version": process.env.VERSION ?? "dev",
    });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
});

server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
