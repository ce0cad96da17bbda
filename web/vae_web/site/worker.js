/* The decoding worker: it owns the onnxruntime-web sessions, so that the page's main thread only
 * draws (a slider never waits for a graph). Requests run one at a time, in order of arrival;
 * each answer is {id, ok, result} or {id, ok: false, error: "a readable line"}. */
'use strict';

let decoder = null;
let encoder = null;
let latentDim = 0;
let queue = Promise.resolve();

self.onmessage = (event) => {
  const request = event.data;
  queue = queue.then(() => handle(request));
};

async function handle(request) {
  try {
    const [result, transfer] = await dispatch(request);
    self.postMessage({ id: request.id, ok: true, result }, transfer);
  } catch (err) {
    self.postMessage({ id: request.id, ok: false, error: String((err && err.message) || err) });
  }
}

async function dispatch(request) {
  switch (request.op) {
    case 'init':
      return [await init(request), []];
    case 'load-encoder':
      encoder = await load(request.base, request.entry, 'encoder');
      return [true, []];
    case 'decode': {
      const images = await decode(request.z, request.n);
      return [images, [images.buffer]];
    }
    case 'decode-logits': {
      const logits = await decodeLogits(request.z, request.n);
      return [logits, [logits.buffer]];
    }
    case 'encode': {
      const outputs = await encode(request.x, request.n);
      return [outputs, outputs.map((o) => o.buffer)];
    }
    case 'bench':
      return [await bench(request.runs, request.batch), []];
    default:
      throw new Error(`unknown request ${request.op}`);
  }
}

async function init({ base, config, threads }) {
  try {
    importScripts(base + 'ort.wasm.min.js');
  } catch (err) {
    throw new Error(`ort.wasm.min.js (onnxruntime-web) could not be loaded: ${err.message}`);
  }
  ort.env.wasm.wasmPaths = base; // this folder, never a CDN
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false; // this worker is the proxy
  ort.env.logLevel = 'error';
  latentDim = config.latent_dim;
  decoder = await load(base, config.decoder, 'decoder'); // the encoder comes after the first grid
  return { threads };
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function load(base, entry, role) {
  let response;
  try {
    response = await fetch(base + entry.file);
  } catch (err) {
    throw new Error(`${entry.file} could not be fetched (${err.message})`);
  }
  if (!response.ok) {
    throw new Error(
      `${entry.file}: HTTP ${response.status} ${response.statusText}; the site folder is ` +
        'incomplete: write it again with vae-web',
    );
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  // crypto.subtle exists on https and localhost pages only; elsewhere the size still is checked.
  const digest = self.crypto && crypto.subtle ? hex(await crypto.subtle.digest('SHA-256', bytes)) : null;
  if (bytes.length !== entry.bytes || (digest !== null && digest !== entry.sha256)) {
    const found = digest ? `SHA-256 ${digest.slice(0, 16)}...` : `${bytes.length} bytes`;
    const want = digest ? `${entry.sha256.slice(0, 16)}...` : `${entry.bytes}`;
    throw new Error(
      `${entry.file}: ${found} does not match ${want} in model.json; the file was changed ` +
        'after vae-web wrote the site: write it again',
    );
  }
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ['wasm'],
      graphOptimizationLevel: 'all',
    });
  } catch (err) {
    throw new Error(`${entry.file}: onnxruntime-web cannot load this ${role} graph (${err.message || err})`);
  }
  // model.json's declarations (vae_runtime.contract's, written by vae-web) are what the page
  // feeds and reads: the graph must have exactly those tensors.
  const names = (tensors) => tensors.map((t) => t.name).join(', ');
  const declared = `${names(entry.inputs)} -> ${names(entry.outputs)}`;
  const found = `${session.inputNames.join(', ')} -> ${session.outputNames.join(', ')}`;
  if (declared !== found) {
    throw new Error(`${entry.file}: the graph has ${found}, model.json declares ${declared}: write the site again with vae-web`);
  }
  return { session, entry };
}

// A declared shape with the batch axis (a name) set to `n`.
const shapeOf = (tensor, n) => tensor.shape.map((d) => (typeof d === 'string' ? n : d));

// Runs `graph` on one Float32Array per declared input (batch `n`); one Float32Array per
// declared output, in declared order.
async function run(graph, arrays, n) {
  const feeds = {};
  graph.entry.inputs.forEach((t, i) => {
    feeds[t.name] = new ort.Tensor(graph.entry.dtype, arrays[i], shapeOf(t, n));
  });
  const out = await graph.session.run(feeds);
  return graph.entry.outputs.map((t) => Float32Array.from(out[t.name].data));
}

// Float32Array (n * latentDim) -> Float32Array (n * 784) in [0, 1]. The runtime clips too:
// the Sigmoid's approximation can return 1.0000001.
async function decode(z, n) {
  const [pixels] = await run(decoder, [z], n);
  for (let i = 0; i < pixels.length; i++) pixels[i] = Math.min(Math.max(pixels[i], 0), 1);
  return pixels;
}

// Float32Array (n * latentDim) -> the decoder's logits (its second declared output, where
// model.json declares one): Float32Array (n * 784), the pre-sigmoid values scoring needs.
async function decodeLogits(z, n) {
  if (decoder.entry.outputs.length < 2) throw new Error('this decoder has no logits output');
  const [, logits] = await run(decoder, [z], n);
  return logits;
}

// Float32Array (n * 784) in [0, 1] -> the encoder's outputs in declared order (mean, log-variance),
// each Float32Array (n * latentDim).
async function encode(x, n) {
  if (!encoder) throw new Error('this site has no encoder');
  return run(encoder, [x], n);
}

// Milliseconds of each of `runs` decoder runs of `batch` latents, inside this worker.
async function bench(runs, batch) {
  const z = new Float32Array(batch * latentDim).map((_, i) => Math.sin(i));
  for (let i = 0; i < 20; i++) await decode(z, batch); // warm-up
  const times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await decode(z, batch);
    times.push(performance.now() - start);
  }
  return times;
}
