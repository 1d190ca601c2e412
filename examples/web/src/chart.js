// A bar chart on a canvas: its own chunk, loaded when the button is clicked.
export function draw(canvas, values) {
  const g = canvas.getContext("2d");
  const max = Math.max(...values);
  const width = canvas.width / values.length;
  g.clearRect(0, 0, canvas.width, canvas.height);
  values.forEach((v, i) => {
    const h = (v / max) * canvas.height;
    g.fillStyle = "#2f6fde";
    g.fillRect(i * width + 2, canvas.height - h, width - 4, h);
  });
}
