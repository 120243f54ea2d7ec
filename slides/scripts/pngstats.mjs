// What a screenshot holds, for tests/slides.rs (which has no PNG decoder of its own): for each
// PNG file given, one JSON line {file, width, height, colours, ink, sha256}: colours is the
// number of distinct RGB(A) pixel values, ink the share of pixels unlike the most common one
// (the background), sha256 a digest of the decoded pixels. Handles what Chromium writes:
// 8-bit RGB or RGBA, not interlaced.
import { readFileSync } from "node:fs";
import { inflateSync } from "node:zlib";
import { createHash } from "node:crypto";

function decode(buf) {
  const sig = "89504e470d0a1a0a";
  if (buf.subarray(0, 8).toString("hex") !== sig) throw new Error("not a PNG");
  let off = 8, width, height, depth, type, interlace;
  const idat = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const kind = buf.subarray(off + 4, off + 8).toString("latin1");
    const body = buf.subarray(off + 8, off + 8 + len);
    if (kind === "IHDR") {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      depth = body[8];
      type = body[9];
      interlace = body[12];
    } else if (kind === "IDAT") idat.push(body);
    else if (kind === "IEND") break;
    off += 12 + len;
  }
  const bpp = { 2: 3, 6: 4 }[type];
  if (depth !== 8 || !bpp || interlace !== 0) throw new Error(`unsupported PNG (depth ${depth}, type ${type}, interlace ${interlace})`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const px = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? px[y * stride + x - bpp] : 0;
      const b = y > 0 ? px[(y - 1) * stride + x] : 0;
      const c = x >= bpp && y > 0 ? px[(y - 1) * stride + x - bpp] : 0;
      let v = line[x];
      if (f === 1) v += a;
      else if (f === 2) v += b;
      else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (f !== 0) throw new Error(`bad filter ${f}`);
      px[y * stride + x] = v & 0xff;
    }
  }
  return { width, height, bpp, px };
}

for (const file of process.argv.slice(2)) {
  const { width, height, bpp, px } = decode(readFileSync(file));
  const counts = new Map();
  for (let i = 0; i < px.length; i += bpp) {
    const k = px.readUIntBE(i, bpp);
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  const most = Math.max(...counts.values());
  const ink = 1 - most / (width * height);
  const sha256 = createHash("sha256").update(px).digest("hex");
  console.log(JSON.stringify({ file, width, height, colours: counts.size, ink: Number(ink.toFixed(4)), sha256 }));
}
