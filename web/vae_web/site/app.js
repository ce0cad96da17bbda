/* The page: model card, prior grid, sliders, drawing, interpolation, 2-D map. The graphs run in
 * worker.js; this thread draws. Every failure becomes a readable message on the page. */
'use strict';

(() => {
  const SIDE = VaeMaths.SIDE;
  const PIXELS = SIDE * SIDE;
  const MAX_SLIDERS = 32;
  const SLIDER_RANGE = 3; // standard deviations of the prior
  const SITE_FORMAT_VERSION = 2; // vae_web.build's: model.json declares each graph's tensors
  const $ = (id) => document.getElementById(id);
  const base = new URL('./', location.href).href;

  let config = null;
  let worker = null;
  let latentDim = 0;
  let current = null; // Float32Array (latentDim): what the sliders show
  let seed = 1;
  let gridLatents = null; // Float32Array (rows * cols * latentDim)
  let ends = [null, null]; // interpolation ends A, B
  let lastInput = null; // Uint8Array (784): the drawing as MNIST
  let lastRecon = null; // Float32Array (784)
  let lastScore = null; // {elbo, iwae, percentile} of the drawing
  let padDirty = false;
  const pending = new Map();
  let nextId = 1;
  const timings = { start: performance.now() };

  function fail(message) {
    const box = $('error');
    box.textContent = message;
    box.hidden = false;
    $('status').textContent = 'Stopped.';
    document.body.dataset.state = 'failed';
  }

  function call(op, payload, transfer = []) {
    return new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      worker.postMessage({ id, op, ...payload }, transfer);
    });
  }

  const decode = (z, n) => call('decode', { z: Float32Array.from(z), n });
  const encode = (x, n) => call('encode', { x: Float32Array.from(x), n });
  const decodeLogits = (z, n) => call('decode-logits', { z: Float32Array.from(z), n });

  // How typical an image is: the bound of vae_runtime.scoring at model.json's reference k, its
  // noise from the page's own generator (fixed: the live score does not flicker), the percentile
  // against the reference's quantiles. `eps` (k * latentDim) may be given (tests).
  let scoreNoise = null;
  async function scoreImage(x, eps = null) {
    const { k, seed: noiseSeed } = config.score;
    if (!eps) {
      scoreNoise = scoreNoise || VaeMaths.priorSamples(k, latentDim, noiseSeed, 1);
      eps = scoreNoise;
    }
    const [mu, logvar] = await encode(x, 1);
    const z = VaeMaths.posteriorLatents(mu, logvar, eps, k, latentDim);
    const logits = await decodeLogits(z, k);
    const bound = VaeMaths.scoreBound(x, mu, logvar, z, logits, k, latentDim);
    return { ...bound, percentile: VaeMaths.percentile(bound[config.score.statistic], config.score.quantiles) };
  }

  // Calls `work(value)` for the latest value only: values that arrive while one is being
  // worked on replace each other, so a fast slider never builds a queue.
  function latest(work) {
    let busy = false;
    let next = null;
    return (value) => {
      next = value;
      if (busy) return;
      busy = true;
      (async () => {
        while (next !== null) {
          const v = next;
          next = null;
          await work(v);
        }
      })()
        .catch((err) => fail(err.message || String(err)))
        .finally(() => {
          busy = false;
        });
    };
  }

  // images: Float32Array (n * 784) -> tiles on `canvas`, `cols` per row, 2 black pixels apart.
  function drawTiles(canvas, images, n, cols, pad = 2) {
    const rows = Math.ceil(n / cols);
    canvas.width = cols * SIDE + (cols + 1) * pad;
    canvas.height = rows * SIDE + (rows + 1) * pad;
    const ctx = canvas.getContext('2d');
    const data = ctx.createImageData(canvas.width, canvas.height);
    data.data.fill(0);
    for (let i = 3; i < data.data.length; i += 4) data.data[i] = 255;
    for (let k = 0; k < n; k++) {
      const x0 = pad + (k % cols) * (SIDE + pad);
      const y0 = pad + Math.floor(k / cols) * (SIDE + pad);
      for (let y = 0; y < SIDE; y++) {
        for (let x = 0; x < SIDE; x++) {
          const v = VaeMaths.toByte(images[k * PIXELS + y * SIDE + x]);
          const o = ((y0 + y) * canvas.width + x0 + x) * 4;
          data.data[o] = data.data[o + 1] = data.data[o + 2] = v;
        }
      }
    }
    ctx.putImageData(data, 0, 0);
    const scale = Math.max(1, Math.min(4, Math.floor(720 / canvas.width)));
    canvas.style.width = `${canvas.width * scale}px`;
    canvas.style.height = `${canvas.height * scale}px`;
  }

  function drawOne(canvas, image) {
    const ctx = canvas.getContext('2d');
    const data = ctx.createImageData(SIDE, SIDE);
    for (let i = 0; i < PIXELS; i++) {
      const v = image instanceof Uint8Array ? image[i] : VaeMaths.toByte(image[i]);
      data.data.set([v, v, v, 255], i * 4);
    }
    ctx.putImageData(data, 0, 0);
  }

  // Which tile of a drawTiles canvas a click fell on (-1 for the padding).
  function tileAt(canvas, event, n, cols, pad = 2) {
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * canvas.width;
    const y = ((event.clientY - rect.top) / rect.height) * canvas.height;
    const col = Math.floor((x - pad) / (SIDE + pad));
    const row = Math.floor((y - pad) / (SIDE + pad));
    const k = row * cols + col;
    return col >= 0 && col < cols && row >= 0 && k < n ? k : -1;
  }

  function renderCard() {
    const table = $('card');
    for (const [label, text] of config.card) {
      const tr = table.insertRow();
      const th = document.createElement('th');
      th.textContent = label;
      tr.appendChild(th);
      tr.insertCell().textContent = text;
    }
    $('badge').textContent = config.precision;
    $('footer').textContent = `${config.built_by}, onnxruntime-web ${config.ort_web}.`;
  }

  // -- the decoded digit under the sliders -------------------------------------------------
  const showCurrent = latest(async (z) => {
    const image = await decode(z, 1);
    drawOne($('digit'), image);
  });

  function setCurrent(z) {
    current = Float32Array.from(z);
    const inputs = $('sliders').querySelectorAll('input');
    inputs.forEach((input, i) => {
      input.value = String(current[i]);
      input.nextElementSibling.textContent = current[i].toFixed(2);
    });
    showCurrent(current);
  }

  function setupSliders() {
    const box = $('sliders');
    const shown = Math.min(latentDim, MAX_SLIDERS);
    if (latentDim > shown) $('sliders-note').textContent = `(the first ${shown} of ${latentDim} dimensions)`;
    for (let i = 0; i < shown; i++) {
      const label = document.createElement('label');
      label.innerHTML = `<span>z${i}</span><input type="range" min="-${SLIDER_RANGE}" max="${SLIDER_RANGE}" step="0.01" value="0"><output>0.00</output>`;
      const input = label.querySelector('input');
      input.setAttribute('aria-label', `latent dimension ${i}`);
      input.addEventListener('input', () => {
        current[i] = Number(input.value);
        input.nextElementSibling.textContent = current[i].toFixed(2);
        showCurrent(current);
      });
      box.appendChild(label);
    }
    $('zero').addEventListener('click', () => setCurrent(new Float32Array(latentDim)));
  }

  // -- the prior grid ------------------------------------------------------------------------
  function gridShape() {
    const clampInt = (id, low, high) => Math.min(Math.max(Math.round(Number($(id).value)) || low, low), high);
    const t = Number($('temperature').value);
    return { rows: clampInt('rows', 1, 10), cols: clampInt('cols', 1, 10), t: Number.isFinite(t) ? Math.min(Math.max(t, 0), 3) : 1 };
  }

  async function newSamples() {
    const { rows, cols, t } = gridShape();
    const n = rows * cols;
    gridLatents = VaeMaths.priorSamples(n, latentDim, seed, t);
    $('seed').textContent = `page seed ${seed}, temperature ${t}`;
    seed += 1;
    const images = await decode(gridLatents, n);
    drawTiles($('grid'), images, n, cols);
  }

  function setupGrid() {
    const run = () => newSamples().catch((err) => fail(err.message || String(err)));
    $('new-samples').addEventListener('click', run);
    for (const id of ['rows', 'cols', 'temperature']) $(id).addEventListener('change', run);
    $('grid').addEventListener('click', (event) => {
      const { rows, cols } = gridShape();
      const k = tileAt($('grid'), event, rows * cols, cols);
      if (k >= 0 && gridLatents && (k + 1) * latentDim <= gridLatents.length) {
        setCurrent(gridLatents.subarray(k * latentDim, (k + 1) * latentDim));
      }
    });
  }

  // -- drawing ---------------------------------------------------------------------------------
  const encodeDrawing = latest(async (grey) => {
    const pad = $('pad');
    lastInput = VaeMaths.fitMnist(grey, pad.width, pad.height);
    drawOne($('fitted'), lastInput);
    const x = Float32Array.from(lastInput, (v) => v / 255); // as the runtime's uint8 / 255
    const [mu] = await encode(x, 1); // the first output: the posterior mean
    lastRecon = await decode(mu, 1);
    drawOne($('recon'), lastRecon);
    setCurrent(mu);
    if (config.score) {
      lastScore = await scoreImage(x);
      $('typical').textContent = VaeMaths.typicality(lastScore.percentile, config.score.source);
      $('typical').title = `${config.score.statistic} ${lastScore.iwae.toFixed(1)} nats (k = ${config.score.k})`;
    }
  });

  function padGrey() {
    const pad = $('pad');
    const rgba = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
    const grey = new Uint8Array(pad.width * pad.height);
    for (let i = 0; i < grey.length; i++) grey[i] = rgba[i * 4]; // white on black: R = G = B
    return grey;
  }

  function clearPad() {
    const pad = $('pad');
    const ctx = pad.getContext('2d');
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, pad.width, pad.height);
  }

  function setupDraw() {
    if (!config.encoder) return; // hidden, not broken
    $('draw-section').hidden = false;
    const pad = $('pad');
    const ctx = pad.getContext('2d');
    clearPad();
    let last = null;
    const point = (event) => {
      const rect = pad.getBoundingClientRect();
      return [((event.clientX - rect.left) / rect.width) * pad.width, ((event.clientY - rect.top) / rect.height) * pad.height];
    };
    const frame = () => {
      if (!padDirty) return;
      padDirty = false;
      encodeDrawing(padGrey());
    };
    pad.addEventListener('pointerdown', (event) => {
      pad.setPointerCapture(event.pointerId);
      last = point(event);
      ctx.fillStyle = '#fff';
      ctx.beginPath();
      ctx.arc(last[0], last[1], 10, 0, 2 * Math.PI);
      ctx.fill();
      padDirty = true;
      requestAnimationFrame(frame);
    });
    pad.addEventListener('pointermove', (event) => {
      if (!last) return;
      const p = point(event);
      ctx.strokeStyle = '#fff';
      ctx.lineWidth = 20;
      ctx.lineCap = 'round';
      ctx.lineJoin = 'round';
      ctx.beginPath();
      ctx.moveTo(last[0], last[1]);
      ctx.lineTo(p[0], p[1]);
      ctx.stroke();
      last = p;
      padDirty = true;
      requestAnimationFrame(frame); // one encode per frame at most
    });
    const up = () => {
      last = null;
    };
    pad.addEventListener('pointerup', up);
    pad.addEventListener('pointercancel', up);
    $('clear').addEventListener('click', () => {
      clearPad();
      lastInput = null;
      lastRecon = null;
      drawOne($('fitted'), new Uint8Array(PIXELS));
      drawOne($('recon'), new Uint8Array(PIXELS));
      lastScore = null;
      $('typical').textContent = '';
    });
  }

  // -- interpolation ---------------------------------------------------------------------------
  const showStrip = latest(async () => {
    const steps = Math.min(Math.max(Math.round(Number($('steps').value)) || 2, 2), 16);
    const path = VaeMaths.interpolate(ends[0], ends[1], steps, $('method').value);
    const images = await decode(path, steps);
    drawTiles($('strip'), images, steps, steps);
  });

  function setupInterp() {
    const { t } = gridShape();
    ends = [VaeMaths.priorSamples(1, latentDim, 1000 + seed, t), VaeMaths.priorSamples(1, latentDim, 2000 + seed, t)];
    const pick = (which, z) => {
      ends[which] = Float32Array.from(z);
      showStrip(true);
    };
    $('a-sample').addEventListener('click', () => pick(0, VaeMaths.priorSamples(1, latentDim, 1000 + seed++, gridShape().t)));
    $('b-sample').addEventListener('click', () => pick(1, VaeMaths.priorSamples(1, latentDim, 2000 + seed++, gridShape().t)));
    $('a-current').addEventListener('click', () => pick(0, current));
    $('b-current').addEventListener('click', () => pick(1, current));
    $('steps').addEventListener('change', () => showStrip(true));
    $('method').addEventListener('change', () => showStrip(true));
    showStrip(true);
  }

  // -- the 2-D map -----------------------------------------------------------------------------
  async function setupManifold() {
    if (!config.manifold) return;
    $('manifold-section').hidden = false;
    const { side, z } = config.manifold; // sampling.manifold_latents(side, side), row by row
    const lattice = Float32Array.from(z);
    const images = await decode(lattice, side * side);
    const canvas = $('manifold');
    drawTiles(canvas, images, side * side, side, 0);
    const xs = Array.from({ length: side }, (_, i) => lattice[i * 2]); // rising left to right
    const ys = Array.from({ length: side }, (_, i) => lattice[i * side * 2 + 1]); // falling downwards
    // Between cell centres, linearly; past the outer centres, the outer values.
    const along = (values, u) => {
      const c = Math.min(Math.max(u * side - 0.5, 0), side - 1);
      const i = Math.min(Math.floor(c), side - 2);
      return values[i] + (values[i + 1] - values[i]) * (c - i);
    };
    canvas.addEventListener('click', (event) => {
      const rect = canvas.getBoundingClientRect();
      const u = (event.clientX - rect.left) / rect.width;
      const v = (event.clientY - rect.top) / rect.height;
      setCurrent([along(xs, u), along(ys, v)]);
    });
  }

  async function start() {
    if (typeof WebAssembly !== 'object' || typeof WebAssembly.instantiate !== 'function') {
      throw new Error(
        'This browser has no WebAssembly, which onnxruntime-web needs: use a current Chrome, Edge, ' +
          'Firefox or Safari (and allow WebAssembly if a policy turned it off).',
      );
    }
    if (location.protocol === 'file:') {
      throw new Error(
        'This page was opened as a file; browsers do not run its WebAssembly from file://. Serve ' +
          'the folder instead: python -m http.server -d SITE_FOLDER, then open http://127.0.0.1:8000/',
      );
    }
    if (typeof Worker !== 'function') throw new Error('This browser has no Web Workers, which the page needs.');
    let response;
    try {
      response = await fetch('model.json');
    } catch (err) {
      throw new Error(`model.json could not be fetched (${err.message})`);
    }
    if (!response.ok) throw new Error(`model.json: HTTP ${response.status}; the site folder is incomplete: write it again with vae-web`);
    config = await response.json();
    if (config.format !== 'mnist-vae/site' || config.format_version !== SITE_FORMAT_VERSION) {
      throw new Error(
        `model.json is ${config.format} version ${config.format_version}, this page reads mnist-vae/site ` +
          `version ${SITE_FORMAT_VERSION}: write the site again with vae-web`,
      );
    }
    latentDim = config.latent_dim;
    current = new Float32Array(latentDim);
    renderCard();
    worker = new Worker('worker.js');
    worker.onmessage = (event) => {
      const { id, ok, result, error } = event.data;
      const waiting = pending.get(id);
      pending.delete(id);
      if (waiting) (ok ? waiting.resolve(result) : waiting.reject(new Error(error)));
    };
    worker.onerror = (event) => fail(`The decoding worker failed: ${event.message || 'worker.js could not run'}`);
    // Threads need SharedArrayBuffer, which only a cross-origin isolated page has (COOP + COEP).
    const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    await call('init', { base, config, threads });
    timings.sessions = performance.now();
    const how = threads > 1 ? `${threads} threads` : 'one thread (serve with COOP/COEP headers for more)';
    $('status').textContent = `Ready: ${config.precision} graphs on onnxruntime-web's wasm backend, ${how}.`;
    $('main').hidden = false;
    setupSliders();
    setupGrid();
    await newSamples();
    timings.firstGrid = performance.now();
    if (config.encoder) await call('load-encoder', { base, entry: config.encoder });
    setupDraw();
    setupInterp();
    await setupManifold();
    showCurrent(current);
    document.body.dataset.state = 'ready';
    document.body.dataset.threads = String(threads);
  }

  window.addEventListener('unhandledrejection', (event) => fail(String((event.reason && event.reason.message) || event.reason)));

  // For tests and benchmarks (tests/web, bench/web_speed.py): the page's own functions.
  window.vaeTest = {
    decode: async (z, n) => Array.from(await decode(z, n)),
    // {output name: values}, the names as model.json declares them
    encode: async (x, n) => {
      const outputs = await encode(x, n);
      return Object.fromEntries(config.encoder.outputs.map((t, i) => [t.name, Array.from(outputs[i])]));
    },
    fitMnist: (grey, w, h) => Array.from(VaeMaths.fitMnist(Uint8Array.from(grey), w, h)),
    interpolate: (a, b, steps, method) => Array.from(VaeMaths.interpolate(a, b, steps, method)),
    priorSamples: (n, seed_, t) => Array.from(VaeMaths.priorSamples(n, latentDim, seed_, t)),
    padGrey: () => ({ width: $('pad').width, height: $('pad').height, grey: Array.from(padGrey()) }),
    lastInput: () => (lastInput ? Array.from(lastInput) : null),
    lastRecon: () => (lastRecon ? Array.from(lastRecon) : null),
    // The score of x (784 values in [0, 1]) with the page's noise or `eps`; the page's noise.
    score: (x, eps) => scoreImage(Float32Array.from(x), eps ? Float32Array.from(eps) : null),
    scoreNoise: () => Array.from(VaeMaths.priorSamples(config.score.k, latentDim, config.score.seed, 1)),
    lastScore: () => lastScore,
    typical: () => $('typical').textContent,
    current: () => Array.from(current),
    bench: (runs, batch) => call('bench', { runs, batch }),
    roundTrips: async (runs, batch) => {
      const z = new Float32Array(batch * latentDim).map((_, i) => Math.cos(i));
      for (let i = 0; i < 20; i++) await decode(z, batch);
      const times = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        await decode(z, batch);
        times.push(performance.now() - t0);
      }
      return times;
    },
    timings,
  };

  start().catch((err) => fail(err.message || String(err)));
})();
