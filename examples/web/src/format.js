// Number formatting. `shout` is exported but unused by the page: tree-shaking removes it, and
// the build's check makes sure its marker never reaches dist/.
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}

export function percent(ratio) {
  return `${Math.round(ratio * 100)} %`;
}

export function shout(text) {
  return `TREE-SHAKEN-AWAY ${text.toUpperCase()}`;
}
