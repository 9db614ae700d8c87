"""Pilot experiments for the survey's frontier directions, on a reference LVLM trained on SynthVis.

Modules: `synthvis` (world, tasks, tokenizer), `model` (the LVLM), `kvcache` (editable KV cache),
`train` (training, evaluation, checkpoint cache), `metrics` (quality, bytes, memory, latency),
`harness` (presets, device, results files), `__main__` (the CLI).

The API a study uses::

    import torch
    from pilot_experiments import synthvis, train, metrics, harness
    from pilot_experiments.kvcache import VISUAL, TEXT

    # 1. a trained model (cached under ~/.cache/efficient-lvlm or $EFFICIENT_LVLM_CACHE;
    #    trained on first use). sizes: "draft", "target", "large"; presets: "smoke", "cpu", "gpu"
    run = train.load_or_train("target", "cpu")          # run.model (eval mode), run.metrics, run.train_config
    model, tok = run.model, synthvis.Tokenizer()

    # 2. a task set: held-out episodes, each with pixels, frame times, ground-truth scenes and QAs
    episodes = synthvis.task_set("image", "test", n=200, image_px=64)   # or "multi", "video"
    ep = episodes[0]; qa = ep.qas[0]                     # qa.kind, qa.question, qa.answer, qa.objects
    patches = ep.scenes[0].object_patches(qa.objects[0][1])   # raster patch indices of the object
    video = synthvis.stream(seed=0, n_frames=2000)       # long videos: video.frames(range(a, b), 4)

    # 3. prefill with an explicit cache, optionally with per-head attention weights
    inputs = train.prompt_inputs(model, ep, qa.question, tok)   # <bos> (<img> visual)* question <ans>
    cache = model.new_cache(batch=1, capacity=inputs.length + 64)
    out = model.prefill(inputs, cache, need_attn=True)   # out.logits (1, T, V); out.attn[layer] (1, H, T, T)
    # inputs.modality / inputs.frame / inputs.positions say which token is visual, its frame, position;
    # the same metadata lives per entry in the cache: cache[l].view().modality (1, kv_heads, length)

    # 4. edit the cache per head: masks are (batch, kv_heads, length) over the hot store
    layer = cache[0]
    visual = layer.view().modality == VISUAL
    layer.remove(visual & (torch.rand(visual.shape) < 0.8))   # masked out of attention
    layer.merge(source_idx, target_idx)                  # (1, kv_heads, m) slot indices; target := mean
    layer.quantize(select_mask, bits=4)                  # int4/int8 per channel, dequantized on read
    layer.offload(select_mask); layer.fetch(select_offloaded)   # to CPU and back
    cache.compact(reserve=32)                            # per-layer max of kept entries: frees memory
    metrics.kv_bytes(cache)                              # logical / resident / offloaded / metadata bytes

    # 5. decode
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    step = model.decode(token, cache, need_attn=False)   # positions continue after the last cached one
    answer = model.generate(inputs, max_new_tokens=40)   # greedy, stops at <eos>; token ids

    # 6. measure and record
    timing = metrics.time_generation(model, inputs, new_tokens=16)   # TTFT, TPOT, throughput (medians)
    with metrics.PeakMemory(device) as mem: ...          # mem.peak_bytes, mem.delta_bytes
    harness.run_study("my-study", preset, study_fn, config)   # study_fn(config) -> harness.StudyRecord

Attention columns are the hot slots in order, then any quantized blocks; `quantize`, `offload`
and `compact` renumber the hot slots (metadata moves with the entries). Positions are original
sequence positions; pass `positions=` to `model.decode` to re-assign them (e.g. StreamingLLM).
"""
