"""This project, end to end through real Dagster materializations: manifest → pixels → predictions → DuckDB.

The three runs ``make run`` makes (``inference_assets.run.pipeline_steps``, asset checks included):
manifest; pixels + predictions over the whole partition range in one run; DuckDB refresh. End to end is the sum of the three runs'
wall times; each stage's own time comes from its asset's ``seconds`` metadata. The top-1 per
image is read back from the DuckDB ``predictions`` table.

With ``--models`` (``INFERENCE_MODELS``: a model list) the same three runs also predict with every listed
model and ensemble (``<name>/prediction_files``); the report then adds ``models``: DuckDB's ``models``,
``comparison_pairs`` and ``model_accuracy`` tables as they are after the run (``model_comparison``).
"""

import os
import time

import duckdb
from dagster import DagsterInstance

from bench.common import parser, report, write_predictions


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--work", required=True, help="work dir (manifest, pixels, result files) and DuckDB file live here")
    p.add_argument("--channels-last", choices=["on", "off"], default="off")
    p.add_argument("--draft", action="store_true", help="Pillow JPEG draft mode (DCT-domain downscaling)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--runtime", default="auto", help="INFERENCE_RUNTIME: auto (the default), torch, openvino or onnxruntime")
    p.add_argument("--converted", default="", help="INFERENCE_CONVERTED_DIR (default: <work>/work/converted)")
    p.add_argument("--models", default="", help="INFERENCE_MODELS: a model list (name=model pairs or a YAML file)")
    args = p.parse_args()
    # the model list is this peer's --models, never one left in the caller's environment
    os.environ["INFERENCE_MODELS"] = args.models
    os.environ.update(
        INFERENCE_IMAGE_ROOT=str(args.images),
        INFERENCE_WORK_DIR=os.path.join(args.work, "work"),
        INFERENCE_DUCKDB_PATH=os.path.join(args.work, "warehouse.duckdb"),
        INFERENCE_DEVICE=args.device,
        INFERENCE_PRECISION=args.precision,
        INFERENCE_MODEL=args.model,
        INFERENCE_WEIGHTS=args.weights,
    )
    from inference_assets.definitions import default_resources
    from inference_assets.resources import DeviceResource, ModelResource, PreprocessingResource
    from inference_assets.run import materialize_step, pipeline_steps

    resources = default_resources()
    resources["device"] = DeviceResource(
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last == "on",
        compile=args.compile,
        runtime=args.runtime,
        converted_dir=args.converted,
    )
    resources["preprocessing"] = PreprocessingResource(decode_workers=args.workers, jpeg_draft=args.draft)
    resources["model"] = ModelResource(name=args.model, weights=args.weights, batch_size=args.batch_size)
    stage_of = {"image_manifest": "manifest", "preprocessed_images": "preprocess", "prediction_files": "predict",
                "prediction_results": "warehouse", "evaluation": "evaluation", "report": "report"}
    run_seconds, stage_seconds, metadata = {}, {}, {}
    with DagsterInstance.ephemeral() as instance:
        for (_, selection, tags), name in zip(pipeline_steps(), ("manifest", "preprocess + predict", "warehouse")):
            start = time.perf_counter()
            result = materialize_step(selection, tags, resources, instance, log_level="WARNING")
            run_seconds[name] = time.perf_counter() - start
            if not result.success:
                raise SystemExit(f"{name} failed")
            for event in result.get_asset_materialization_events():
                values = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
                key = event.asset_key.to_user_string()
                stage = stage_of.get(key, key)
                stage_seconds[stage] = values.get("seconds")
                metadata[stage] = {k: values[k] for k in values
                                   if k in ("computed", "predicted", "reused", "images", "batch_size", "channels_last",
                                            "decode_workers", "images_per_second", "files_hashed", "hashes_reused",
                                            "jpeg_draft", "compiled", "seconds", "runtime", "runtime_parity",
                                            "runtime_settled_by_pytorch")
                                   or (args.models and k in MODEL_LIST_KEYS)}
    # stages without their own `seconds` (manifest, warehouse) are timed by their whole run
    seconds = {**{k: v for k, v in stage_seconds.items() if v is not None},
               **{k: run_seconds[k] for k in ("manifest", "warehouse")}}
    with duckdb.connect(os.environ["INFERENCE_DUCKDB_PATH"], read_only=True) as conn:
        rows = conn.execute(
            "SELECT i.relative_path, p.class_index FROM predictions p JOIN images i USING (image_id) ORDER BY 1"
        ).fetchall()
        models = model_tables(conn) if args.models else None
    write_predictions(args.out, [path for path, _ in rows], [int(i) for _, i in rows])
    extra = {"models": models} if models is not None else {}
    report(images=len(rows), seconds=sum(run_seconds.values()), stages=seconds, runs=run_seconds, metadata=metadata,
           **extra)


# more metadata kept with a model list: the pixel sets preprocessed, the model (or an ensemble's members) of each step
MODEL_LIST_KEYS = ("pixel_sets", "input_size", "preprocessing", "model", "members", "weights", "failed")


def model_tables(conn) -> dict:
    """The model list's tables after the run: ``models``, ``comparison_pairs``, ``model_accuracy`` (as dicts)."""
    def rows(query: str) -> list[dict]:
        cursor = conn.execute(query)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    return {
        "models": rows("SELECT model_name, position, kind, is_primary, model, tta, members, predictions "
                       "FROM models ORDER BY position, model_name"),
        "pairs": rows("SELECT model_a, model_b, images, agreements, agreement, labelled, a_top1_correct, "
                      "b_top1_correct FROM comparison_pairs"),
        "accuracy": rows("SELECT model_name, labelled, evaluated, top1_accuracy, top5_accuracy FROM model_accuracy "
                         "ORDER BY position, model_name"),
    }


if __name__ == "__main__":
    main()
