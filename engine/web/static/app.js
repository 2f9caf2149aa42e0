// scapecast in a browser: the engine's avatar rendered with WebGL2 from its `params` stream.
//
// Data flow: one WebSocket (/ws) brings a `hello` (camera, lights, shader defines, the desktop shaders converted to
// GLSL ES 3.00 by engine/web/shaders.py, the identity's manifest name), then one binary message per engine frame
// (engine/web/frames.py: weights, model-view, eye rotations, active key expressions and their coefficients — all
// computed by serve with the desktop's Python). The identity's assets (engine/web/assets.py) are fetched once by
// content-hashed name and cached by the browser. Per drawn frame the page only sums the blendshapes (sparse, on
// the CPU like the desktop renderer on software rasterizers), turns the eyeballs, uploads one vertex buffer and
// draws the five groups with the desktop's own shaders. It draws the newest message at display rate, never a
// backlog; it reconnects by itself (backoff 0.25 → 5 s) when serve or the engine goes away.
//
// URL options: ?token=… (required when serve asks for one), ?overlay=0 (no status text), ?bg=none (transparent
// page, for stream overlays), ?aa=1 (antialiasing on).
// Test hook: window.scapecast (stats, capture, renderFrame, renderUV, benchmark, compose, decodePng).
"use strict";

(() => {
  const query = new URLSearchParams(location.search);
  const TOKEN = query.get("token");
  const withToken = (path) => (TOKEN ? `${path}?token=${encodeURIComponent(TOKEN)}` : path);
  const TEXTURE_WIDTH = 2048; // WebGL2 guarantees textures this wide; the layout is set by this define
  const N_WEIGHTS = 53;
  const GROUP_FACE = 0;

  const canvas = document.getElementById("avatar");
  const overlay = document.getElementById("overlay");
  if (query.get("overlay") === "0") overlay.classList.add("hidden");
  if (query.get("bg") === "none") document.body.classList.add("transparent");

  const stats = {
    ready: false, connected: false, engine: "connecting", detail: "", identity: null, manifest: null,
    received: 0, rendered: 0, receiveHz: 0, renderFps: 0, latencyMs: null, latencyP50Ms: null, rttMs: null,
    frameMs: null, morphMs: null, drawMs: null, gpuMs: null, seq: null, tracking: null, confidence: null, reconnects: 0,
    errors: [], renderer: "", compiled: 0, source: null, sources: 0,
  };
  const fail = (where, error) => {
    const text = `${where}: ${error && error.message ? error.message : error}`;
    stats.errors.push(text);
    console.error(text);
  };

  // ---- PNG (8/16-bit grey/RGB/RGBA, not interlaced): exact stored values, no colour management -----------------

  async function inflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function decodePng(buffer) {
    const bytes = new Uint8Array(buffer);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const signature = [137, 80, 78, 71, 13, 10, 26, 10];
    if (!signature.every((b, i) => bytes[i] === b)) throw new Error("not a PNG");
    let pos = 8, width = 0, height = 0, depth = 0, colorType = 0;
    const idat = [];
    while (pos < bytes.length) {
      const length = dv.getUint32(pos);
      const kind = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
      const data = bytes.subarray(pos + 8, pos + 8 + length);
      if (kind === "IHDR") {
        width = dv.getUint32(pos + 8); height = dv.getUint32(pos + 12);
        depth = data[8]; colorType = data[9];
        if (data[12] !== 0) throw new Error("interlaced PNGs are not supported");
      } else if (kind === "IDAT") idat.push(data);
      else if (kind === "IEND") break;
      pos += 12 + length;
    }
    const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[colorType];
    if (!channels || (depth !== 8 && depth !== 16)) throw new Error(`PNG colour type ${colorType} depth ${depth}`);
    const raw = await inflate(new Blob(idat));
    const bpp = (channels * depth) / 8, stride = width * bpp;
    const out = new Uint8Array(stride * height);
    for (let y = 0, src = 0; y < height; y++) {
      const filter = raw[src++], row = y * stride, prev = row - stride;
      if (filter === 0) out.set(raw.subarray(src, src + stride), row);
      else if (filter === 1) {
        for (let i = 0; i < stride; i++) out[row + i] = raw[src + i] + (i >= bpp ? out[row + i - bpp] : 0);
      } else if (filter === 2) {
        for (let i = 0; i < stride; i++) out[row + i] = raw[src + i] + (y ? out[prev + i] : 0);
      } else if (filter === 3) {
        for (let i = 0; i < stride; i++) {
          const a = i >= bpp ? out[row + i - bpp] : 0, b = y ? out[prev + i] : 0;
          out[row + i] = raw[src + i] + ((a + b) >> 1);
        }
      } else if (filter === 4) {
        for (let i = 0; i < stride; i++) {
          const a = i >= bpp ? out[row + i - bpp] : 0, b = y ? out[prev + i] : 0;
          const c = i >= bpp && y ? out[prev + i - bpp] : 0;
          const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
          out[row + i] = raw[src + i] + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
        }
      } else throw new Error(`PNG filter ${filter}`);
      src += stride;
    }
    if (depth === 8) return { width, height, channels, depth, data: out };
    const wide = new Uint16Array(out.length / 2);
    for (let i = 0; i < wide.length; i++) wide[i] = (out[2 * i] << 8) | out[2 * i + 1];
    return { width, height, channels, depth, data: wide };
  }

  // ---- WebGL2 ---------------------------------------------------------------------------------------------------

  const gl = canvas.getContext("webgl2", {
    antialias: query.get("aa") === "1", alpha: true, premultipliedAlpha: true, depth: true, stencil: false,
    preserveDrawingBuffer: false, powerPreference: "high-performance",
  });
  if (!gl) {
    overlay.textContent = "This browser has no WebGL2.";
    return;
  }
  const debugInfo = gl.getExtension("WEBGL_debug_renderer_info");
  stats.renderer = debugInfo ? gl.getParameter(debugInfo.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
  const floatTargets = gl.getExtension("EXT_color_buffer_float"); // only renderUV (a test of the blend) needs it
  const timer = gl.getExtension("EXT_disjoint_timer_query_webgl2"); // the draws' GPU time, where the browser tells
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);

  const ATTRIBUTES = ["in_position", "in_normal", "in_uv", "in_class", "in_albedo", "in_rest"];
  let hello = null; // {config, shaders, …}
  let avatar = null; // GPU resources of the current identity
  let loadingManifest = null;

  // The layout of shader_source (engine/render/context.py): version (+ precision), one define a line, #line 1, body.
  function compose(name, defines) {
    let text = hello.shaders.header;
    for (const [key, value] of Object.entries(defines)) text += `\n#define ${key} ${value}`;
    return `${text}\n#line 1\n${hello.shaders.shaders[name]}`;
  }

  function compile(vertexName, fragmentName, defines) {
    const program = gl.createProgram();
    for (const [stage, name] of [[gl.VERTEX_SHADER, vertexName], [gl.FRAGMENT_SHADER, fragmentName]]) {
      const shader = gl.createShader(stage);
      gl.shaderSource(shader, compose(name, defines));
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
        throw new Error(`${name} (${JSON.stringify(defines)}): ${gl.getShaderInfoLog(shader)}`);
      }
      gl.attachShader(program, shader);
    }
    ATTRIBUTES.forEach((name, i) => gl.bindAttribLocation(program, i, name));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
      throw new Error(`${vertexName} + ${fragmentName}: ${gl.getProgramInfoLog(program)}`);
    }
    const uniforms = {};
    const count = gl.getProgramParameter(program, gl.ACTIVE_UNIFORMS);
    for (let i = 0; i < count; i++) {
      const info = gl.getActiveUniform(program, i);
      const name = info.name.replace(/\[0\]$/, "");
      uniforms[name] = gl.getUniformLocation(program, info.name);
    }
    stats.compiled += 1;
    return { program, uniforms };
  }

  function typed(buffer, layout) {
    const kinds = { float32: Float32Array, uint8: Uint8Array, uint16: Uint16Array, int16: Int16Array, int32: Int32Array };
    const out = {};
    for (const [name, { offset, dtype, shape }] of Object.entries(layout)) {
      out[name] = new kinds[dtype](buffer, offset, shape.reduce((a, b) => a * b, 1));
    }
    return out;
  }

  function flipRows(data, rowLength, rows) {
    const out = new data.constructor(data.length);
    for (let y = 0; y < rows; y++) out.set(data.subarray(y * rowLength, (y + 1) * rowLength), (rows - 1 - y) * rowLength);
    return out;
  }

  async function fetchBytes(name) {
    const response = await fetch(withToken(`/assets/${name}`));
    if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
    return response.arrayBuffer();
  }

  // One 2×2 box-filter level down (what glGenerateMipmap does on the desktop), for float RGB data.
  function halve(data, size) {
    const half = Math.max(1, size >> 1), out = new Float32Array(half * half * 3);
    for (let y = 0; y < half; y++) {
      for (let x = 0; x < half; x++) {
        for (let c = 0; c < 3; c++) {
          const a = ((2 * y) * size + 2 * x) * 3 + c, b = ((2 * y + 1) * size + 2 * x) * 3 + c;
          out[(y * half + x) * 3 + c] = 0.25 * (data[a] + data[a + 3] + data[b] + data[b + 3]);
        }
      }
    }
    return out;
  }

  async function loadIdentity(manifestName) {
    const manifest = JSON.parse(new TextDecoder().decode(await fetchBytes(manifestName)));
    const files = manifest.files;
    const pending = [fetchBytes(files.mesh)];
    pending.push(manifest.albedo_map ? fetchBytes(files.albedo).then(decodePng) : Promise.resolve(null));
    const tiles = manifest.bases ? manifest.bases.tiles.map((name) => fetchBytes(name).then(decodePng)) : [];
    const [meshBytes, albedo] = await Promise.all(pending);
    const arrays = typed(meshBytes, manifest.arrays);
    const R = manifest.vertices, K = manifest.mask_texels;

    const resources = { manifest, arrays, textures: [], buffers: [] };
    const buffer = (target, data, usage) => {
      const b = gl.createBuffer();
      gl.bindBuffer(target, b);
      gl.bufferData(target, data, usage);
      resources.buffers.push(b);
      return b;
    };
    // Dynamic: position + normal (R, 6); static: uv 2, class 1, albedo 3, rest position 3 (as MeshBuffers).
    resources.deformed = new Float32Array(arrays.rest);
    const staticData = new Float32Array(R * 9);
    for (let v = 0; v < R; v++) {
      const o = v * 9;
      staticData[o] = arrays.uv[2 * v]; staticData[o + 1] = arrays.uv[2 * v + 1];
      staticData[o + 2] = arrays.classes[v];
      staticData.set(arrays.albedo.subarray(3 * v, 3 * v + 3), o + 3);
      staticData.set(arrays.rest.subarray(6 * v, 6 * v + 3), o + 6);
    }
    resources.vao = gl.createVertexArray();
    gl.bindVertexArray(resources.vao);
    resources.deformedBuffer = buffer(gl.ARRAY_BUFFER, resources.deformed, gl.DYNAMIC_DRAW);
    gl.enableVertexAttribArray(0); gl.vertexAttribPointer(0, 3, gl.FLOAT, false, 24, 0);
    gl.enableVertexAttribArray(1); gl.vertexAttribPointer(1, 3, gl.FLOAT, false, 24, 12);
    buffer(gl.ARRAY_BUFFER, staticData, gl.STATIC_DRAW);
    [[2, 2, 0], [3, 1, 8], [4, 3, 12], [5, 3, 24]].forEach(([loc, size, offset]) => {
      gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, size, gl.FLOAT, false, 36, offset);
    });
    buffer(gl.ELEMENT_ARRAY_BUFFER, arrays.indices, gl.STATIC_DRAW);
    gl.bindVertexArray(null);

    // Masks A_j: RGBA32F, element k at (k % W, k / W), as engine/render/mesh.py lays them out.
    const texels = R * K, rows = Math.ceil(texels / TEXTURE_WIDTH);
    const masks = new Float32Array(rows * TEXTURE_WIDTH * 4);
    for (let i = 0; i < arrays.masks.length; i++) masks[i] = arrays.masks[i] / 65535;
    resources.masks = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, resources.masks);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, TEXTURE_WIDTH, rows, 0, gl.RGBA, gl.FLOAT, masks);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    resources.textures.push(resources.masks);

    if (albedo) { // RGB8, row 0 = v = 0, mipmapped, nearest level (as AvatarRenderer._upload_albedo)
      resources.albedo = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, resources.albedo);
      const rgba = new Uint8Array(albedo.width * albedo.height * 4);
      const src = flipRows(albedo.data, albedo.width * 3, albedo.height);
      for (let i = 0, j = 0; i < src.length; i += 3, j += 4) {
        rgba[j] = src[i]; rgba[j + 1] = src[i + 1]; rgba[j + 2] = src[i + 2]; rgba[j + 3] = 255;
      }
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, albedo.width, albedo.height, 0, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
      gl.generateMipmap(gl.TEXTURE_2D);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR_MIPMAP_NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      resources.textures.push(resources.albedo);
    }
    if (manifest.bases) { // RGB16F array, 20 layers, every mip level (as AvatarRenderer._upload_bases)
      const { resolution: N, bits, lo, hi } = manifest.bases;
      const levels = Math.floor(Math.log2(N)) + 1, top = 2 ** bits - 1;
      resources.bases = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D_ARRAY, resources.bases);
      gl.texStorage3D(gl.TEXTURE_2D_ARRAY, levels, gl.RGB16F, N, N, tiles.length);
      for (let layer = 0; layer < tiles.length; layer++) {
        const tile = await tiles[layer];
        if (tile.width !== N || tile.height !== N || tile.channels !== 3) throw new Error(`bases tile ${layer}`);
        const codes = flipRows(tile.data, N * 3, N);
        let level = new Float32Array(N * N * 3);
        for (let c = 0; c < 3; c++) {
          const l = lo[layer][c], span = (hi[layer][c] - l) / top;
          for (let i = c; i < level.length; i += 3) level[i] = l + codes[i] * span;
        }
        for (let m = 0, size = N; m < levels; m++, size = Math.max(1, size >> 1)) {
          gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, m, 0, 0, layer, size, size, 1, gl.RGB, gl.FLOAT, level);
          if (m + 1 < levels) level = halve(level, size);
        }
      }
      gl.texParameteri(gl.TEXTURE_2D_ARRAY, gl.TEXTURE_MIN_FILTER, gl.LINEAR_MIPMAP_NEAREST);
      gl.texParameteri(gl.TEXTURE_2D_ARRAY, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D_ARRAY, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D_ARRAY, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      resources.textures.push(resources.bases);
    }
    // Index ranges per draw group (manifest.group_counts: triangles per DrawGroup, in order).
    resources.ranges = [];
    let first = 0;
    for (const count of manifest.group_counts) { resources.ranges.push([3 * first, 3 * count]); first += count; }
    resources.programs = new Map();
    resources.name = manifestName;
    return resources;
  }

  function release(resources) {
    if (!resources) return;
    resources.buffers.forEach((b) => gl.deleteBuffer(b));
    resources.textures.forEach((t) => gl.deleteTexture(t));
    gl.deleteVertexArray(resources.vao);
    for (const { program } of resources.programs.values()) gl.deleteProgram(program);
  }

  let wantedManifest = null; // the identity serve announced last
  async function switchIdentity(manifestName) {
    if (manifestName) wantedManifest = manifestName;
    if (!manifestName || (avatar && avatar.name === manifestName) || loadingManifest === manifestName) return;
    loadingManifest = manifestName; // the current avatar (if any) is drawn until the new one is ready
    try {
      const loaded = await loadIdentity(manifestName);
      if (loadingManifest !== manifestName) { release(loaded); return; } // a newer identity was announced meanwhile
      release(avatar);
      avatar = loaded;
      stats.manifest = manifestName;
      stats.identity = loaded.manifest.identity;
      stats.ready = true;
    } catch (error) {
      fail("identity", error);
      setTimeout(() => wantedManifest === manifestName && switchIdentity(manifestName), 3000); // try again
    } finally {
      if (loadingManifest === manifestName) loadingManifest = null;
    }
  }

  // ---- one frame ------------------------------------------------------------------------------------------------

  function parseFrame(buffer) {
    const dv = new DataView(buffer);
    const n = dv.getUint32(0, true);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
    const floats = new Float32Array(buffer, 4 + n);
    return {
      meta, weights: floats.subarray(0, N_WEIGHTS), modelView: floats.subarray(N_WEIGHTS, N_WEIGHTS + 16),
      eyes: floats.subarray(N_WEIGHTS + 16, N_WEIGHTS + 34), coef: floats.subarray(N_WEIGHTS + 34),
    };
  }

  // Blendshapes on the CPU: rest + Σ w_j Δ_j over each shape's stored entries; eyeballs turned about their centres.
  function morph(frame) {
    const { arrays, manifest, deformed } = avatar;
    const { morph_count: counts, morph_index: index, morph_delta: delta, morph_scale: scale } = arrays;
    deformed.set(arrays.rest);
    for (let j = 0, k0 = 0; j < N_WEIGHTS; k0 += counts[j], j++) {
      const w = frame.weights[j];
      if (w === 0) continue;
      const sp = w * scale[2 * j], sn = w * scale[2 * j + 1], end = k0 + counts[j];
      for (let k = k0; k < end; k++) {
        const v = 6 * index[k], d = 6 * k;
        deformed[v] += sp * delta[d]; deformed[v + 1] += sp * delta[d + 1]; deformed[v + 2] += sp * delta[d + 2];
        deformed[v + 3] += sn * delta[d + 3]; deformed[v + 4] += sn * delta[d + 4]; deformed[v + 5] += sn * delta[d + 5];
      }
    }
    if (frame.meta.eyes) {
      for (let e = 0; e < 2; e++) {
        const [lo, hi] = manifest.eye_ranges[e], [cx, cy, cz] = manifest.eye_centers[e], r = frame.eyes.subarray(9 * e);
        for (let v = lo; v < hi; v++) {
          const o = 6 * v, x = arrays.rest[o] - cx, y = arrays.rest[o + 1] - cy, z = arrays.rest[o + 2] - cz;
          const nx = arrays.rest[o + 3], ny = arrays.rest[o + 4], nz = arrays.rest[o + 5];
          deformed[o] = r[0] * x + r[1] * y + r[2] * z + cx;
          deformed[o + 1] = r[3] * x + r[4] * y + r[5] * z + cy;
          deformed[o + 2] = r[6] * x + r[7] * y + r[8] * z + cz;
          deformed[o + 3] = r[0] * nx + r[1] * ny + r[2] * nz;
          deformed[o + 4] = r[3] * nx + r[4] * ny + r[5] * nz;
          deformed[o + 5] = r[6] * nx + r[7] * ny + r[8] * nz;
        }
      }
    }
    gl.bindBuffer(gl.ARRAY_BUFFER, avatar.deformedBuffer);
    gl.bufferSubData(gl.ARRAY_BUFFER, 0, deformed);
  }

  // engine.render.camera.Camera.projection for this aspect (column-major).
  function projection(width, height) {
    const c = hello.config.camera, f = 1 / Math.tan((c.fov_y_deg * Math.PI) / 360), n = c.near_cm, far = c.far_cm;
    return new Float32Array([(f * height) / width, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + n) / (n - far), -1,
      0, 0, (2 * far * n) / (n - far), 0]);
  }

  function variant(group, detail, nActive) {
    const key = `${group}/${detail}/${nActive}`;
    let entry = avatar.programs.get(key);
    if (entry) return entry;
    const m = avatar.manifest;
    const defines = {
      MASK_TEXELS: m.mask_texels, TEXTURE_WIDTH, ...hello.config.defines, ALBEDO_MAP: m.albedo_map ? 1 : 0,
      GROUP: group, DETAIL: detail ? 1 : 0, N_ACTIVE: nActive, M_SLOTS: Math.max(1, Math.ceil(nActive / 4)),
    };
    entry = compile("avatar.vert.glsl", "avatar.frag.glsl", defines);
    gl.useProgram(entry.program);
    const u = entry.uniforms;
    // Distinct units even when unused (a sampler2D and a sampler2DArray may not share one).
    if (u.u_masks) gl.uniform1i(u.u_masks, 1);
    if (u.u_bases) gl.uniform1i(u.u_bases, 2);
    if (u.u_albedo_map) gl.uniform1i(u.u_albedo_map, 3);
    const constants = { ...m.uniforms, u_iris_color: hello.config.uniforms.u_iris_color };
    if (u.u_eye_pole) gl.uniform3fv(u.u_eye_pole, constants.u_eye_pole.flat());
    if (u.u_head_albedo) gl.uniform3fv(u.u_head_albedo, constants.u_head_albedo);
    if (u.u_iris_color) gl.uniform3fv(u.u_iris_color, constants.u_iris_color);
    if (u.u_mouth_depth) gl.uniform2fv(u.u_mouth_depth, constants.u_mouth_depth);
    if (u.u_debug_range_mm) gl.uniform1f(u.u_debug_range_mm, constants.u_debug_range_mm);
    entry.aspect = null;
    avatar.programs.set(key, entry);
    return entry;
  }

  // The desktop's draw(): clear, depth test, the five groups in order, back faces culled where the desktop culls,
  // lash coverage blended without depth writes like the desktop's _BLEND_FUNC.
  function draw(frame, width, height, options = {}) {
    const config = hello.config, light = config.lighting, bg = config.background;
    gl.viewport(0, 0, width, height);
    if (bg[3] > 0) gl.clearColor(bg[0], bg[1], bg[2], bg[3]); else gl.clearColor(0, 0, 0, 0);
    gl.clearDepth(1.0);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    gl.depthFunc(gl.LESS);
    gl.bindVertexArray(avatar.vao);
    gl.activeTexture(gl.TEXTURE1); gl.bindTexture(gl.TEXTURE_2D, avatar.masks);
    gl.activeTexture(gl.TEXTURE2); gl.bindTexture(gl.TEXTURE_2D_ARRAY, avatar.bases || null);
    gl.activeTexture(gl.TEXTURE3); gl.bindTexture(gl.TEXTURE_2D, avatar.albedo || null);
    const detailOn = Boolean((options.detail ?? config.detail) && avatar.bases);
    const nActive = frame.meta.n_active, K = avatar.manifest.mask_texels;
    const active = new Int32Array(19);
    active.set(frame.meta.active);
    const aspect = `${width}x${height}`;
    for (const { group, culled, blended } of config.groups) {
      const [first, count] = avatar.ranges[group];
      if (!count || (options.groups && !options.groups.includes(group))) continue;
      if (culled) gl.enable(gl.CULL_FACE); else gl.disable(gl.CULL_FACE);
      if (blended) {
        gl.enable(gl.BLEND);
        gl.blendFuncSeparate(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
        gl.depthMask(false);
      }
      const detail = detailOn && group === GROUP_FACE;
      const entry = variant(group, detail, detail ? nActive : 0), u = entry.uniforms;
      gl.useProgram(entry.program);
      if (entry.aspect !== aspect) {
        gl.uniformMatrix4fv(u.u_projection, false, projection(width, height));
        entry.aspect = aspect;
      }
      gl.uniformMatrix4fv(u.u_model_view, false, frame.modelView);
      if (u.u_light_dir) gl.uniform3fv(u.u_light_dir, light.u_light_dir.flat());
      if (u.u_light_color) gl.uniform3fv(u.u_light_color, light.u_light_color.flat());
      if (u.u_sky) gl.uniform3fv(u.u_sky, light.u_sky);
      if (u.u_ground) gl.uniform3fv(u.u_ground, light.u_ground);
      if (u.u_detail_gain) gl.uniform1f(u.u_detail_gain, config.uniforms.u_detail_gain);
      if (detail && nActive > 0) {
        gl.uniform4fv(u.u_coef, frame.coef.subarray(0, nActive * K * 4));
        gl.uniform1iv(u.u_active, active);
      }
      gl.drawElements(gl.TRIANGLES, count, gl.UNSIGNED_SHORT, first * 2);
      if (blended) {
        gl.disable(gl.BLEND);
        gl.depthMask(true);
      }
    }
    gl.disable(gl.CULL_FACE);
    gl.bindVertexArray(null);
  }

  // ---- offscreen targets (captures for tests, benchmarks) -------------------------------------------------------

  function target(width, height, float) {
    const fb = gl.createFramebuffer(), color = gl.createRenderbuffer(), depth = gl.createRenderbuffer();
    gl.bindRenderbuffer(gl.RENDERBUFFER, color);
    gl.renderbufferStorage(gl.RENDERBUFFER, float ? gl.RGBA32F : gl.RGBA8, width, height);
    gl.bindRenderbuffer(gl.RENDERBUFFER, depth);
    gl.renderbufferStorage(gl.RENDERBUFFER, gl.DEPTH_COMPONENT24, width, height);
    gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
    gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.RENDERBUFFER, color);
    gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.DEPTH_ATTACHMENT, gl.RENDERBUFFER, depth);
    const release = () => { gl.deleteFramebuffer(fb); gl.deleteRenderbuffer(color); gl.deleteRenderbuffer(depth); };
    return { fb, release };
  }

  function base64(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  function fromBase64(text) {
    const binary = atob(text), out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out.buffer;
  }

  // Draw `frame` into a width × height target and read it back: RGBA8, top row first (as AvatarRenderer.render).
  function renderOffscreen(frame, width, height) {
    const t = target(width, height, false);
    try {
      morph(frame);
      draw(frame, width, height);
      const pixels = new Uint8Array(width * height * 4);
      gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
      return flipRows(pixels, width * 4, height);
    } finally {
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      t.release();
    }
  }

  // uv_detail.{vert,frag}.glsl over the face group into an n × n float target: (F, dF/du, dF/dv, coverage).
  function renderUV(frame, n) {
    if (!floatTargets) throw new Error("EXT_color_buffer_float is missing");
    const m = avatar.manifest, nActive = frame.meta.n_active;
    const defines = { MASK_TEXELS: m.mask_texels, TEXTURE_WIDTH, N_ACTIVE: nActive,
      M_SLOTS: Math.max(1, Math.ceil(nActive / 4)) };
    const { program, uniforms: u } = compile("uv_detail.vert.glsl", "uv_detail.frag.glsl", defines);
    const t = target(n, n, true);
    try {
      gl.viewport(0, 0, n, n);
      gl.clearColor(0, 0, 0, 0);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.disable(gl.DEPTH_TEST);
      gl.useProgram(program);
      gl.uniform1i(u.u_masks, 1);
      gl.uniform1i(u.u_bases, 2);
      gl.activeTexture(gl.TEXTURE1); gl.bindTexture(gl.TEXTURE_2D, avatar.masks);
      gl.activeTexture(gl.TEXTURE2); gl.bindTexture(gl.TEXTURE_2D_ARRAY, avatar.bases);
      if (nActive > 0) {
        gl.uniform4fv(u.u_coef, frame.coef.subarray(0, nActive * m.mask_texels * 4));
        const active = new Int32Array(19);
        active.set(frame.meta.active);
        gl.uniform1iv(u.u_active, active);
      }
      gl.bindVertexArray(avatar.vao);
      gl.drawElements(gl.TRIANGLES, avatar.ranges[GROUP_FACE][1], gl.UNSIGNED_SHORT, 0);
      gl.bindVertexArray(null);
      const out = new Float32Array(n * n * 4);
      gl.readPixels(0, 0, n, n, gl.RGBA, gl.FLOAT, out);
      return out; // row 0 = v = 0, like AvatarRenderer.render_uv
    } finally {
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.enable(gl.DEPTH_TEST);
      t.release();
      gl.deleteProgram(program);
    }
  }

  // ---- the live loop --------------------------------------------------------------------------------------------

  let latest = null, drawn = null;
  const recent = []; // the last 60 frames, for benchmark()
  const latencies = [];
  let rttMin = null;
  const rate = { received: [], rendered: [] };
  const tick = (list, now) => { list.push(now); while (list.length && now - list[0] > 2000) list.shift(); };
  const hz = (list) => (list.length > 1 ? (1000 * (list.length - 1)) / (list[list.length - 1] - list[0]) : 0);

  function resize() {
    const scale = Math.min(window.devicePixelRatio || 1, 2);
    let width = Math.max(1, Math.round(canvas.clientWidth * scale));
    let height = Math.max(1, Math.round(canvas.clientHeight * scale));
    const cap = 1600 * 1200; // a phone's full-resolution screen costs more than it shows: cap the pixel count
    if (width * height > cap) {
      const s = Math.sqrt(cap / (width * height));
      width = Math.round(width * s); height = Math.round(height * s);
    }
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  }

  let timerQuery = null; // one GPU timer query in flight at a time
  function readTimer() {
    if (!timerQuery || !gl.getQueryParameter(timerQuery, gl.QUERY_RESULT_AVAILABLE)) return;
    if (!gl.getParameter(timer.GPU_DISJOINT_EXT)) stats.gpuMs = gl.getQueryParameter(timerQuery, gl.QUERY_RESULT) / 1e6;
    gl.deleteQuery(timerQuery);
    timerQuery = null;
  }

  function frameLoop() {
    requestAnimationFrame(frameLoop);
    if (timer) readTimer();
    if (!avatar || !stats.ready || !latest || latest === drawn) return;
    try {
      resize();
      const t0 = performance.now();
      morph(latest);
      const t1 = performance.now();
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      const timed = timer && !timerQuery;
      if (timed) { timerQuery = gl.createQuery(); gl.beginQuery(timer.TIME_ELAPSED_EXT, timerQuery); }
      draw(latest, canvas.width, canvas.height);
      if (timed) gl.endQuery(timer.TIME_ELAPSED_EXT);
      const t2 = performance.now();
      drawn = latest;
      stats.rendered += 1;
      tick(rate.rendered, t2);
      stats.morphMs = t1 - t0; stats.drawMs = t2 - t1; stats.frameMs = t2 - t0;
      if (rttMin !== null) {
        // capture → this frame's pixels: the engine and serve (age_ms), the WebSocket hop (half the best ping round
        // trip), the wait here until drawn, and the draws' GPU time (the last one measured, where the browser tells).
        const latency = latest.meta.age_ms + rttMin / 2 + (t2 - latest.received) + (stats.gpuMs || 0);
        stats.latencyMs = latency;
        latencies.push(latency);
        if (latencies.length > 100) latencies.shift();
        const sorted = [...latencies].sort((a, b) => a - b);
        stats.latencyP50Ms = sorted[sorted.length >> 1];
      }
    } catch (error) {
      fail("render", error);
      stats.ready = false;
    }
  }

  function showOverlay() {
    stats.receiveHz = hz(rate.received);
    stats.renderFps = hz(rate.rendered);
    const f = (x, digits = 1) => (x === null || x === undefined ? "–" : x.toFixed(digits));
    const lines = [
      `engine   ${stats.engine}${stats.connected ? "" : " (page offline, reconnecting)"}`,
      `tracking ${stats.tracking || "–"}  confidence ${f(stats.confidence, 2)}`,
      `params   ${f(stats.receiveHz)} Hz   render ${f(stats.renderFps)} fps`,
      `latency  ${f(stats.latencyMs)} ms (p50 ${f(stats.latencyP50Ms)})  capture → drawn`,
      `frame    blendshapes ${f(stats.morphMs)} ms, draw calls ${f(stats.drawMs)} ms, GPU ${f(stats.gpuMs)} ms`,
      `avatar   ${stats.identity || (loadingManifest ? "loading…" : "–")}`,
    ];
    if (stats.errors.length) lines.push(`error    ${stats.errors[stats.errors.length - 1]}`);
    overlay.textContent = lines.join("\n");
  }
  setInterval(showOverlay, 250);
  requestAnimationFrame(frameLoop);

  // ---- the connection -------------------------------------------------------------------------------------------

  let socket = null, backoff = 250, pingTimer = null, source = null;
  const rtts = [];

  function connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${withToken("/ws")}`;
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      stats.connected = true;
      backoff = 250;
      const ping = () => socket.readyState === 1 && socket.send(JSON.stringify({ type: "ping", t: performance.now() }));
      ping();
      pingTimer = setInterval(ping, 2000);
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") return control(JSON.parse(event.data));
      const frame = parseFrame(event.data);
      frame.received = performance.now();
      if (frame.meta.source !== source) { // another engine run (a restart): its latencies start afresh
        source = frame.meta.source; latencies.length = 0; stats.source = source; stats.sources += 1;
      }
      latest = frame;
      recent.push(frame);
      if (recent.length > 60) recent.shift();
      stats.received += 1;
      stats.seq = frame.meta.seq;
      stats.tracking = frame.meta.tracking.state;
      stats.confidence = frame.meta.tracking.confidence;
      tick(rate.received, frame.received);
    };
    socket.onclose = () => {
      stats.connected = false;
      clearInterval(pingTimer);
      stats.reconnects += 1;
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 5000);
    };
  }

  function control(message) {
    if (message.type === "hello") {
      const changed = !hello || JSON.stringify(hello.shaders) !== JSON.stringify(message.shaders) ||
        JSON.stringify(hello.config) !== JSON.stringify(message.config);
      hello = message;
      if (changed && avatar) { avatar.programs.forEach(({ program }) => gl.deleteProgram(program)); avatar.programs.clear(); }
      stats.engine = message.engine;
      stats.detail = message.detail;
      switchIdentity(message.manifest);
    } else if (message.type === "identity") {
      switchIdentity(message.manifest);
    } else if (message.type === "status") {
      stats.engine = message.engine;
      stats.detail = message.detail;
    } else if (message.type === "pong") {
      rtts.push(performance.now() - message.t);
      if (rtts.length > 10) rtts.shift();
      rttMin = Math.min(...rtts);
      stats.rttMs = rttMin;
    }
  }

  connect();

  // ---- test hook ------------------------------------------------------------------------------------------------

  const frameInfo = (frame) => ({ meta: frame.meta, weights: Array.from(frame.weights) });
  window.scapecast = {
    stats,
    compose: (name, defines) => compose(name, defines),
    // The newest received frame drawn offscreen at width × height: {meta, weights, pixels (base64 RGBA)}.
    capture(width, height) {
      if (!stats.ready || !latest) return null;
      const frame = latest;
      return { ...frameInfo(frame), pixels: base64(renderOffscreen(frame, width, height)) };
    },
    // A per-frame message made elsewhere (base64 of what serve sends), drawn offscreen: base64 RGBA.
    renderFrame(message, width, height) {
      return base64(renderOffscreen(parseFrame(fromBase64(message)), width, height));
    },
    renderUV(message, n) {
      return base64(new Uint8Array(renderUV(parseFrame(fromBase64(message)), n).buffer));
    },
    async decodePng(b64) {
      const image = await decodePng(fromBase64(b64));
      return { ...image, data: base64(new Uint8Array(image.data.buffer)) };
    },
    // Frame time: each of the last received frames drawn `rounds` times at width × height, finished (readPixels of
    // one pixel waits for the GPU), after one untimed round that compiles the variants. Medians in ms.
    // options: {detail: false} turns the detail blend off, {groups: [0, 1]} draws only those groups.
    benchmark(width, height, rounds = 2, options = {}) {
      const frames = recent.slice();
      if (!frames.length || !stats.ready) return null;
      const t = target(width, height, false);
      const pixel = new Uint8Array(4);
      const morphs = [], draws = [], totals = [];
      try {
        for (let round = -1; round < rounds; round++) {
          for (const frame of frames) {
            const t0 = performance.now();
            morph(frame);
            const t1 = performance.now();
            draw(frame, width, height, options);
            gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
            const t2 = performance.now();
            if (round >= 0) { morphs.push(t1 - t0); draws.push(t2 - t1); totals.push(t2 - t0); }
          }
        }
      } finally {
        gl.bindFramebuffer(gl.FRAMEBUFFER, null);
        t.release();
      }
      const median = (list) => [...list].sort((a, b) => a - b)[list.length >> 1];
      return { frames: totals.length, width, height, morph_ms: median(morphs), draw_ms: median(draws),
        frame_ms: median(totals), renderer: stats.renderer };
    },
  };
})();
