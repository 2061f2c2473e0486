"""The Markdown table of a benchmark summary (what ``bench/results/*.md`` and the README show)."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _agreement(a: dict | None) -> str:
    if not a:
        return "–"
    return f"{100 * a['rate']:.2f} % ({a['same']}/{a['images']})"


def _dataloader_batch(c: dict) -> str:
    sweep = c.get("dataloader_sweep")
    if not sweep:
        return f"{c.get('dataloader_batch_size', 64)} for the DataLoader loop"
    tried = ", ".join(f"{size}: {rate:.1f} img/s" for size, rate in sweep.items())
    return f"{c['dataloader_batch_size']} for the DataLoader loop, its fastest in round 1 ({tried})"


def markdown(s: dict) -> str:
    m, c = s["machine"], s["config"]
    lines = [
        f"# Benchmark: {c['images']} images, {c['model']} ({c['weights']}), {c['device']}, {c['precision']}",
        "",
        f"- When: {s['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags']) or 'no AVX'}), {m['memory_gib']} GiB"
        f", GPU: {m['gpu'] or 'none'}; {m['os']}, Python {m['python']}",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v),
        f"- Collection: {c['images']} generated images (seed {c['seed']}): "
        + ", ".join(f"{v} {k}" for k, v in c["collection"].items()),
        f"- Medians of {c['repeats']} interleaved rounds; batch size {c['batch_size']} (the project's automatic choice"
        + ("; on CUDA probed, the model limit probes the same way" if c["device"].startswith("cuda") else "")
        + ") for the project, Ray Data and the model limit"
        + ("; " + _dataloader_batch(c) if "dataloader" in s["peers"] else "") + ".",
        "",
        "| pipeline | images/s (median) | runs | peak memory (PSS, MiB) | top-1 = reference |",
        "|---|---:|---|---:|---:|",
    ]
    for name, p in s["peers"].items():
        runs = ", ".join(f"{x:.1f}" for x in p["images_per_second_runs"])
        lines.append(
            f"| {p['title']} | {p['images_per_second']:.1f} | {runs} | {p['peak_pss_mib']:.0f} | "
            f"{_agreement(p['top1_agreement_with_reference'])} |"
        )
    onnx = s["peers"].get("project_onnx")
    if onnx and onnx.get("top1_agreement_with_project"):
        lines.append(f"| (ONNX Runtime path: top-1 = this project's PyTorch path) | | | | "
                     f"{_agreement(onnx['top1_agreement_with_project'])} |")
    if "limit_images_per_second" in s:
        lines.append(f"| limit 1 / (1/model + 1/decode) | {s['limit_images_per_second']:.1f} | | | |")
    lines += ["", "The reference for top-1 is the per-image loop: the model's own transform and an fp32 forward pass, one image at a time.", ""]
    if s.get("ratios"):
        lines += ["| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f}× |" if "limit" not in k or "eager" in k else f"| {k} | {100 * v:.1f} % |"
                  for k, v in s["ratios"].items()]
        lines.append("")
    project = s["peers"].get("project")
    if project and project["details"]:
        predict = project["details"][-1].get("metadata", {}).get("predict", {})
        if predict.get("runtime"):
            lines += [f"Project forward pass (last round): {predict['runtime']}; {predict.get('runtime_parity') or ''}"
                      + (f"; {predict['runtime_settled_by_pytorch']} images near a tie predicted by PyTorch"
                         if predict.get("runtime_settled_by_pytorch") is not None else "")
                      + ". Round 1 converted the network; later rounds reused it.", ""]
        stages = project["details"][-1].get("stages", {})
        if stages:
            lines.append(
                "Project stages (last round): " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()) + "."
            )
            lines.append("")
    if s.get("variants"):
        lines += [
            "| project variant | images/s | peak memory (MiB) | top-1 = exact project run | top-1 = reference |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, v in s["variants"].items():
            label = name
            if name == "incremental":
                label = f"incremental: +{v['added_images']} new images, re-run over the last full run's outputs"
            lines.append(
                f"| {label} | {v['images_per_second']:.1f} ({v['seconds']:.1f}s) | {v['peak_pss_mib']:.0f} | "
                f"{_agreement(v['top1_agreement_with_exact'])} | {_agreement(v['top1_agreement_with_reference'])} |"
            )
        inc = s["variants"].get("incremental")
        if inc:
            lines += ["", f"Incremental re-run cost: {inc['seconds']:.1f}s = {_pct(inc['cost_vs_full_run'])} of a full run "
                      f"(stages: " + ", ".join(f"{k} {x:.1f}s" for k, x in inc["report"].get("stages", {}).items()) + ")."]
        lines.append("")
    for name, why in (s.get("skipped_variants") or {}).items():
        lines += [f"Variant `{name}` not run: {why}.", ""]
    if s.get("scale"):
        sc = s["scale"]
        lines += [
            "| scale | images | images/s | peak memory (MiB) |",
            "|---|---:|---:|---:|",
            f"| small | {sc['images'][0]} | {sc['images_per_second'][0]:.1f} | {sc['peak_pss_mib'][0]:.0f} |",
            f"| large | {sc['images'][1]} | {sc['images_per_second'][1]:.1f} | {sc['peak_pss_mib'][1]:.0f} |",
            f"| change | ×{sc['images'][1] / sc['images'][0]:.0f} | {100 * sc['speed_change']:+.1f} % | {100 * sc['memory_change']:+.1f} % |",
            "",
        ]
        inc = sc.get("incremental")
        if inc:
            lines += [f"Incremental re-run at {sc['images'][1]} images: +{inc['added_images']} new images in "
                      f"{inc['seconds']:.1f}s = {_pct(inc['cost_vs_full_run'])} of that full run (stages: "
                      + ", ".join(f"{k} {x:.1f}s" for k, x in (inc.get("stages") or {}).items()) + ").", ""]
    if s.get("models"):
        lines += _models(s["models"], s["peers"].get("project_models"))
    return "\n".join(lines) + "\n"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _models(m: dict, peer: dict | None) -> list[str]:
    """The ``project_models`` peer's section: each model's prediction step, the preprocessing, the agreement table."""
    rounds = m["rounds"]
    lines = ["## Models", "",
             "The project with a model list (`project_models`: `INFERENCE_MODELS`), "
             + (f"end to end {peer['images_per_second']:.1f} img/s; " if peer else "")
             + ("medians of " + f"{rounds} rounds" if rounds > 1 else "one round") + ". "
             "img/s: a model's prediction step, images predicted / (reading pixels + forward passes + writing) "
             "(its `images_per_second` metadata); an ensemble runs no forward pass, it averages its members' stored "
             "probabilities. seconds: the whole step, loading the model (and converting its network in a round "
             "that found no converted one) included. Top-1 accuracy: on the images whose label is one of the models' "
             "classes (`model_accuracy`); agreement: the images both models predicted (`comparison_pairs`).", ""]
    pre = m["preprocessing"]
    if pre.get("seconds") is not None:
        lines += [f"Preprocessing: {pre['pixel_sets']} pixel sets ({pre['input_size']}) in {pre['seconds']:.1f}s, "
                  f"{pre['seconds_per_pixel_set']:.1f}s per pixel set on average, "
                  f"{_num(pre['images_per_second'])} img/s per pixel set.", ""]
    lines += ["| model | kind | model / members | runtime | img/s (prediction step) | seconds | predicted "
              "| top-1 accuracy |", "|---|---|---|---|---:|---:|---:|---:|"]
    for x in m["models"]:
        what = ", ".join(x["members"]) if x["kind"] == "ensemble" and x["members"] else x["model"]
        what += f" (TTA {x['tta']})" if x.get("tta") else ""
        name = x["name"] + (" (primary)" if x["primary"] else "")
        lines.append(f"| {name} | {x['kind']} | {what} | {x['runtime'] or '–'} | {_num(x['images_per_second'])} | "
                     f"{_num(x['seconds'])} | {x['predicted'] if x['predicted'] is not None else '–'} | "
                     f"{_pct(x['top1_accuracy'])}" + (f" (of {x['evaluated']})" if x["evaluated"] else "") + " |")
    lines += ["", "| pair | images | same top-1 | agreement |", "|---|---:|---:|---:|"]
    for pair in m["pairs"]:
        lines.append(f"| {pair['model_a']} – {pair['model_b']} | {pair['images']} | {pair['agreements']} | "
                     f"{_pct(pair['agreement'])} |")
    lines.append("")
    if not m.get("accuracy_measured"):
        lines += ["Top-1 accuracy: – (null in `model_accuracy`): none of the collection's labels is one of the "
                  "models' classes, so the agreement between the models is the comparison.", ""]
    return lines
