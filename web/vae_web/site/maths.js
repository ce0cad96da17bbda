/* The page's arithmetic, written to match the Python runtime step for step:
 *   fitMnist     = vae_runtime.inputs.fit_mnist (Pillow's LANCZOS resize included, fixed point),
 *   interpolate  = vae_runtime.sampling.interpolate (lerp / slerp, float64, then float32),
 *   priorSamples = N(0, temperature^2 I) as sampling.sample_latents draws it (float64, scaled,
 *                  then float32); the generator is a seeded one of the page's own, not numpy's.
 * tests/web/test_web.py runs each against the Python function in Chromium. No DOM here. */
'use strict';

const VaeMaths = (() => {
  const SIDE = 28; // MNIST's frame
  const BOX = 20; // the digit's box inside it
  const INK = 30; // grey level above which a pixel is ink when cropping
  const PRECISION_BITS = 32 - 8 - 2; // Pillow's fixed point for 8-bit resampling

  // Python's round() and numpy's rint: halves go to the even neighbour.
  function roundHalfEven(x) {
    const r = Math.round(x);
    return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function sinc(x) {
    if (x === 0.0) return 1.0;
    const px = x * Math.PI;
    return Math.sin(px) / px;
  }
  const LANCZOS = { support: 3.0, filter: (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0) };
  const BOXF = { support: 0.5, filter: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) };

  // Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input
  // pixel, how many are used, and their integer weights.
  function coefficients(inSize, outSize, f) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = f.support * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const kk = new Float64Array(outSize * ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterscale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        const w = f.filter((x + xmin - center + 0.5) * ss);
        kk[xx * ksize + x] = w;
        ww += w;
      }
      for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    const one = 2 ** PRECISION_BITS;
    const ints = kk.map((k) => Math.trunc(k < 0 ? -0.5 + k * one : 0.5 + k * one));
    return { bounds, kk: ints, ksize };
  }

  function clip8(ss) {
    if (ss >= 2 ** (PRECISION_BITS + 8)) return 255;
    if (ss <= 0) return 0;
    return Math.floor(ss / 2 ** PRECISION_BITS);
  }

  // Pillow's ImagingResample for an 8-bit image: horizontal pass (rows the vertical pass
  // needs only), then vertical pass. Uint8Array (h, w) -> Uint8Array (oh, ow).
  function resize(src, w, h, ow, oh, f) {
    if (w === ow && h === oh) return Uint8Array.from(src);
    const hor = coefficients(w, ow, f);
    const ver = coefficients(h, oh, f);
    const vb = Int32Array.from(ver.bounds);
    let img = src;
    let iw = w;
    if (ow !== w) {
      const first = vb[0];
      const last = vb[oh * 2 - 2] + vb[oh * 2 - 1];
      for (let i = 0; i < oh; i++) vb[i * 2] -= first;
      const rows = last - first;
      const tmp = new Uint8Array(ow * rows);
      for (let yy = 0; yy < rows; yy++) {
        const row = (yy + first) * w;
        for (let xx = 0; xx < ow; xx++) {
          const xmin = hor.bounds[xx * 2];
          const xmax = hor.bounds[xx * 2 + 1];
          let ss = 2 ** (PRECISION_BITS - 1);
          for (let x = 0; x < xmax; x++) ss += src[row + x + xmin] * hor.kk[xx * hor.ksize + x];
          tmp[yy * ow + xx] = clip8(ss);
        }
      }
      img = tmp;
      iw = ow;
    }
    if (oh === h) return img;
    const out = new Uint8Array(ow * oh);
    for (let yy = 0; yy < oh; yy++) {
      const ymin = vb[yy * 2];
      const ymax = vb[yy * 2 + 1];
      for (let xx = 0; xx < ow; xx++) {
        let ss = 2 ** (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += img[(y + ymin) * iw + xx] * ver.kk[yy * ver.ksize + y];
        out[yy * ow + xx] = clip8(ss);
      }
    }
    return out;
  }

  // inputs.fit_mnist: uint8 grey (h, w), any size -> uint8 (28, 28), white ink on black.
  function fitMnist(grey, w, h) {
    let pixels = Uint8Array.from(grey);
    let borderSum = 0;
    for (let x = 0; x < w; x++) borderSum += pixels[x] + pixels[(h - 1) * w + x];
    for (let y = 0; y < h; y++) borderSum += pixels[y * w] + pixels[y * w + w - 1];
    if (borderSum / (2 * w + 2 * h) > 127) pixels = pixels.map((v) => 255 - v);
    if (w === SIDE && h === SIDE) return pixels;
    let top = h;
    let bottom = -1;
    let left = w;
    let right = -1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (pixels[y * w + x] > INK) {
          top = Math.min(top, y);
          bottom = Math.max(bottom, y);
          left = Math.min(left, x);
          right = Math.max(right, x);
        }
      }
    }
    if (bottom < 0) return resize(pixels, w, h, SIDE, SIDE, BOXF); // blank: nothing to centre
    const ih = bottom - top + 1;
    const iw = right - left + 1;
    const side = Math.max(ih, iw);
    const square = new Uint8Array(side * side);
    const oy = Math.floor((side - ih) / 2);
    const ox = Math.floor((side - iw) / 2);
    for (let y = 0; y < ih; y++) {
      for (let x = 0; x < iw; x++) square[(oy + y) * side + ox + x] = pixels[(top + y) * w + left + x];
    }
    const box = Float64Array.from(resize(square, side, side, BOX, BOX, LANCZOS));
    let max = 0;
    for (const v of box) max = Math.max(max, v);
    if (max > 0) {
      const factor = 255.0 / max;
      for (let i = 0; i < box.length; i++) box[i] *= factor;
    }
    // Centre of mass to the frame's centre, the 20x20 box kept inside the frame.
    let mass = 0;
    let my = 0;
    let mx = 0;
    for (let y = 0; y < BOX; y++) {
      for (let x = 0; x < BOX; x++) {
        const v = box[y * BOX + x];
        mass += v;
        my += v * y;
        mx += v * x;
      }
    }
    const clamp = (v) => Math.min(Math.max(v, 0), SIDE - BOX);
    const fy = clamp(roundHalfEven(SIDE / 2 - 0.5 - my / mass));
    const fx = clamp(roundHalfEven(SIDE / 2 - 0.5 - mx / mass));
    const frame = new Uint8Array(SIDE * SIDE);
    for (let y = 0; y < BOX; y++) {
      for (let x = 0; x < BOX; x++) {
        const v = Math.min(Math.max(box[y * BOX + x], 0), 255);
        frame[(fy + y) * SIDE + fx + x] = roundHalfEven(v);
      }
    }
    return frame;
  }

  function norm(v) {
    let s = 0;
    for (const x of v) s += x * x;
    return Math.sqrt(s);
  }

  // sampling.interpolate: (d,) ends -> Float32Array (steps * d), row by row, ends included.
  function interpolate(z0, z1, steps, method) {
    const a = Float64Array.from(z0);
    const b = Float64Array.from(z1);
    const d = a.length;
    const out = new Float32Array(steps * d);
    const na = norm(a);
    const nb = norm(b);
    let omega = 0;
    let slerp = false;
    if (method === 'slerp' && na > 0 && nb > 0 && Number.isFinite(na * nb)) {
      let dot = 0;
      for (let j = 0; j < d; j++) dot += (a[j] / na) * (b[j] / nb);
      omega = Math.acos(Math.min(Math.max(dot, -1), 1));
      slerp = Math.sin(omega) >= 1e-6; // (anti)parallel ends have no unique great circle
    }
    const step = 1 / (steps - 1); // numpy's linspace(0, 1, steps), its last value exactly 1
    for (let i = 0; i < steps; i++) {
      const t = i === steps - 1 ? 1.0 : i * step;
      for (let j = 0; j < d; j++) {
        let v = (1 - t) * a[j] + t * b[j];
        if (slerp) {
          const dir =
            (Math.sin((1 - t) * omega) * (a[j] / na) + Math.sin(t * omega) * (b[j] / nb)) /
            Math.sin(omega);
          v = dir * ((1 - t) * na + t * nb);
        }
        out[i * d + j] = v;
      }
    }
    return out;
  }

  // mulberry32: a small seeded generator of uint32s (the page's own; numpy's PCG64 stream is
  // not reproduced here, so a page seed is not a vae-generate seed).
  function generator(seed) {
    let s = seed >>> 0;
    return () => {
      s = (s + 0x6d2b79f5) >>> 0;
      let t = s;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // n latents from N(0, temperature^2 I): standard normals (Box-Muller) in float64, scaled,
  // then float32, as sample_latents does.
  function priorSamples(n, d, seed, temperature) {
    const uniform = generator(seed);
    const out = new Float32Array(n * d);
    for (let i = 0; i < n * d; i += 2) {
      const u1 = 1 - uniform(); // (0, 1]: log never sees 0
      const u2 = uniform();
      const r = Math.sqrt(-2 * Math.log(u1));
      out[i] = r * Math.cos(2 * Math.PI * u2) * temperature;
      if (i + 1 < n * d) out[i + 1] = r * Math.sin(2 * Math.PI * u2) * temperature;
    }
    return out;
  }

  // -- scoring: how typical an image is (vae_runtime.scoring's bound, in float64) ------------
  const LOG_2PI = Math.log(2 * Math.PI);

  // The k latents z = mu + exp(logvar / 2) * eps (float32, as the decoder takes them), eps
  // Float32Array (k * d) of standard normals (the page's: priorSamples at temperature 1).
  function posteriorLatents(mu, logvar, eps, k, d) {
    const z = new Float32Array(k * d);
    for (let s = 0; s < k; s++) {
      for (let j = 0; j < d; j++) z[s * d + j] = mu[j] + Math.exp(0.5 * logvar[j]) * eps[s * d + j];
    }
    return z;
  }

  // {elbo, iwae} in nats for one image x (784 values in [0, 1]) from the encoder's mu and
  // logvar, the k latents z and the decoder's logits (k * 784): the log-weights
  // log p(x|z) + log p(z) - log q(z|x), with log p(x|z) = sum x l - softplus(l); elbo = their
  // mean, iwae = their log-mean-exp (computed stably).
  function scoreBound(x, mu, logvar, z, logits, k, d) {
    const n = x.length;
    const weights = new Float64Array(k);
    for (let s = 0; s < k; s++) {
      let lik = 0;
      for (let i = 0; i < n; i++) {
        const l = logits[s * n + i];
        const softplus = l > 0 ? l + Math.log1p(Math.exp(-l)) : Math.log1p(Math.exp(l));
        lik += x[i] * l - softplus;
      }
      let prior = 0;
      let post = 0;
      for (let j = 0; j < d; j++) {
        const v = z[s * d + j];
        const diff = v - mu[j];
        prior += -0.5 * (v * v + LOG_2PI);
        post += -0.5 * (diff * diff * Math.exp(-logvar[j]) + logvar[j] + LOG_2PI);
      }
      weights[s] = lik + prior - post;
    }
    let top = -Infinity;
    let sum = 0;
    for (const w of weights) top = Math.max(top, w);
    for (const w of weights) sum += Math.exp(w - top);
    let mean = 0;
    for (const w of weights) mean += w / k;
    return { elbo: mean, iwae: top + Math.log(sum) - Math.log(k) };
  }

  // numpy.interp(x, xp, fp, left, right) for ascending xp.
  function interp(x, xp, fp, left, right) {
    const last = xp.length - 1;
    if (x < xp[0]) return left;
    if (x > xp[last]) return right;
    if (x === xp[last]) return fp[last];
    let lo = 0;
    let hi = last; // xp[lo] <= x < xp[hi]
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (xp[mid] <= x) lo = mid;
      else hi = mid;
    }
    const slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo]);
    return slope * (x - xp[lo]) + fp[lo];
  }

  // ScoreReference.percentile: the percentage (0..100) of reference images scoring below
  // `value`, interpolated in the ascending quantile table, ties taken at their middle.
  function percentile(value, quantiles) {
    const m = quantiles.length;
    const levels = Array.from({ length: m }, (_, i) => (i === m - 1 ? 100 : i * (100 / (m - 1))));
    const low = interp(value, quantiles, levels, 0, 100);
    const negQ = quantiles.map((q) => -q).reverse();
    const negL = levels.map((v) => -v).reverse();
    const high = -interp(-value, negQ, negL, -100, 0);
    return (low + high) / 2;
  }

  // The words the draw panel shows for a percentile p against `source`.
  function typicality(p, source) {
    if (Number.isNaN(p)) return '';
    if (p < 0.1) return `unusual: below 0.1% of ${source}`;
    if (p < 1) return `unusual: ${p.toFixed(1)}th percentile of ${source}`;
    const r = Math.round(p);
    const suffix = r % 100 >= 11 && r % 100 <= 13 ? 'th' : { 1: 'st', 2: 'nd', 3: 'rd' }[r % 10] || 'th';
    return `${p < 5 ? 'unusual' : 'typical'}: ${r}${suffix} percentile of ${source}`;
  }

  // images.to_uint8's rule for showing float pixels: [0, 1] -> 0..255, rounded.
  function toByte(v) {
    return Math.round(Math.min(Math.max(v, 0), 1) * 255);
  }

  return {
    fitMnist,
    resize,
    interpolate,
    priorSamples,
    posteriorLatents,
    scoreBound,
    percentile,
    typicality,
    roundHalfEven,
    toByte,
    SIDE,
  };
})();

if (typeof module !== 'undefined') module.exports = VaeMaths; // node, for quick checks
