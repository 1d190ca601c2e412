// The build's test stage: `node --test src/`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { bytes, percent } from "./format.js";

test("bytes", () => {
  assert.equal(bytes(512), "512 B");
  assert.equal(bytes(2048), "2 KiB");
  assert.equal(bytes(1536), "1.5 KiB");
});

test("percent", () => {
  assert.equal(percent(0.97), "97 %");
});
