"""Kubernetes deployment (deploy/k8s/): each step's Job as dagster-k8s renders it, without a cluster.

The executor is built from ``kubernetes_executor()`` the way a run pod builds it. Its
``K8sStepHandler`` then launches every step of the code location's asset job. The run comes from
an instance whose ``dagster.yaml`` and code-location container context are what the Dagster chart
makes of ``values.yaml``. A local HTTP endpoint stands in for the Kubernetes API server: the
kubernetes client POSTs each Job to it, and the tests read those JSON bodies.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecutorDefinition,
    define_asset_job,
    reconstructable,
    validate_run_config,
)
from dagster._core.definitions.executor_definition import check_cross_process_constraints
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._grpc.types import ExecuteStepArgs

from inference_assets.core.errors import ConfigError
from inference_assets.definitions import ASSET_CHECKS, ASSETS, default_resources, defs
from inference_assets.kubernetes import EXECUTOR_CONFIG_PATH, kubernetes_executor, load_executor_config
from inference_assets.partitions import IMAGE_SHARDS, range_tags

from inference_assets_tests.support.environment import PROJECT_ROOT

VALUES_PATH = PROJECT_ROOT / "deploy" / "k8s" / "values.yaml"
NAMESPACE = "dagster"  # the Helm release's namespace
GPU = "nvidia.com/gpu"
ASSET_STEPS = ("image_manifest", "preprocessed_images", "prediction_files", "prediction_results", "evaluation", "report")


def k8s_asset_job():
    """Every asset and check of the code location as one job on the Kubernetes executor."""
    job = define_asset_job("all_assets_k8s", selection=AssetSelection.all())
    defs = Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[job],
        resources=default_resources(),
        executor=kubernetes_executor(),
    )
    return defs.resolve_job_def("all_assets_k8s")


def helm_values() -> dict:
    return yaml.safe_load(VALUES_PATH.read_text())


def user_deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def deployment_image(deployment: dict) -> str:
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def chart_container_context(deployment: dict) -> dict:
    """What the chart reports as the code location's container context (``DAGSTER_CONTAINER_CONTEXT``,
    its ``dagsterUserDeployments.k8sContainerContext`` helper): the parts these values determine."""
    return {
        "k8s": {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_secrets": [secret["name"] for secret in deployment.get("envSecrets", [])],
            "volume_mounts": deployment.get("volumeMounts", []),
            "volumes": deployment.get("volumes", []),
            "resources": deployment.get("resources", {}),
            "namespace": NAMESPACE,
            "env": deployment.get("env", []),
        }
    }


def chart_run_launcher(values: dict, kubeconfig: str) -> dict:
    """The ``run_launcher`` the chart writes into ``dagster.yaml`` (its ``dagsterYaml.runLauncher.k8s``
    helper), with the test's kubeconfig in place of the in-cluster one."""
    launcher = values["runLauncher"]
    config = launcher["config"]["k8sRunLauncher"]
    return {
        "module": "dagster_k8s",
        "class": launcher["type"],
        "config": {
            "load_incluster_config": False,
            "kubeconfig_file": kubeconfig,
            "job_namespace": config.get("jobNamespace") or NAMESPACE,
            "image_pull_policy": config["imagePullPolicy"],
            "service_account_name": "dagster",
            "dagster_home": "/opt/dagster/dagster_home",
            "instance_config_map": "dagster-instance",
            "postgres_password_secret": "dagster-postgresql-secret",
            "env_config_maps": [item["name"] for item in config.get("envConfigMaps", [])],
            "env_secrets": [item["name"] for item in config.get("envSecrets", [])],
            "env_vars": config.get("envVars", []),
        },
    }


class _RecordingApiServer(BaseHTTPRequestHandler):
    """Accepts every POST as created and keeps its JSON body, as ``server.posted``."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posted.append((self.path, json.loads(body)))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def api_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingApiServer)
    server.posted = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def step_jobs(api_server, tmp_path_factory) -> dict[str, dict]:
    """Step key -> the Kubernetes Job that the K8sStepHandler creates for it."""
    values = helm_values()
    deployment = user_deployment(values)
    home = tmp_path_factory.mktemp("k8s")
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{api_server.server_port}"}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": NAMESPACE}}],
                "current-context": "test",
            }
        )
    )
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"run_launcher": chart_run_launcher(values, str(kubeconfig)), "telemetry": {"enabled": False}})
    )

    recon_job = reconstructable(k8s_asset_job)
    origin = recon_job.get_python_origin()
    origin = origin._replace(
        repository_origin=origin.repository_origin._replace(
            container_image=deployment_image(deployment), container_context=chart_container_context(deployment)
        )
    )
    job_def = recon_job.get_definition()
    with DagsterInstance.from_config(str(home)) as instance:
        plan = create_execution_plan(recon_job)
        run = instance.create_run_for_job(job_def, execution_plan=plan, run_config={}, job_code_origin=origin)

        # What a run pod does: resolve the executor config, check its requirements, create it.
        init_context = InitExecutorContext(
            job=recon_job,
            executor_def=job_def.executor_def,
            executor_config=ResolvedRunConfig.build(job_def, run.run_config).execution.execution_engine_config,
            instance=instance,
        )
        check_cross_process_constraints(init_context)
        executor = job_def.executor_def.executor_creation_fn(init_context)
        plan_context = PlanOrchestrationContext(
            plan_data=PlanData(job=recon_job, dagster_run=run, instance=instance, execution_plan=plan),
            log_manager=create_context_free_log_manager(instance, run),
            executor=executor,
            output_capture=None,
        )
        jobs = {}
        for step in plan.steps:
            context = StepHandlerContext(
                instance=instance,
                plan_context=plan_context,
                steps=[step],
                execute_step_args=ExecuteStepArgs(origin, run.run_id, [step.key], instance_ref=instance.get_ref()),
                dagster_run=run,
            )
            list(executor._step_handler.launch_step(context))
            path, body = api_server.posted.pop()
            assert path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
            jobs[step.key] = body
    return jobs


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container(job: dict) -> dict:
    (main,) = pod_spec(job)["containers"]
    return main


def env(job: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container(job)["env"]}


def test_every_step_of_the_code_location_gets_a_job(step_jobs):
    plan = create_execution_plan(reconstructable(k8s_asset_job))
    assert set(step_jobs) == {step.key for step in plan.steps}
    assert set(ASSET_STEPS) <= set(step_jobs)  # an asset's step key is its name
    for key, job in step_jobs.items():
        assert job["kind"] == "Job" and job["metadata"]["labels"]["dagster/op"] == key
        assert env(job)["DAGSTER_RUN_STEP_KEY"] == key
        assert container(job)["args"][:3] == ["dagster", "api", "execute_step"]


@pytest.mark.fast
def test_per_step_config_names_only_ops_of_the_code_location():
    ops = {node.name for node in k8s_asset_job().nodes}
    per_step = load_executor_config()["per_step_k8s_config"]
    assert set(per_step) == set(ASSET_STEPS) and set(per_step) <= ops
    # A run over a range of partitions (a single-run backfill) has the same step keys.
    keys = IMAGE_SHARDS.get_partition_keys()
    tags = range_tags(keys[0], keys[-1])
    plan = create_execution_plan(defs.resolve_job_def("partitioned_inference"), tags=tags)
    assert {step.key for step in plan.steps} == {"preprocessed_images", "prediction_files"}


def test_predictions_pod_requests_a_gpu_on_a_gpu_node(step_jobs):
    job = step_jobs["prediction_files"]
    resources = container(job)["resources"]
    assert resources["requests"][GPU] == "1" and resources["limits"][GPU] == "1"
    assert resources["requests"]["cpu"] == "4" and resources["requests"]["memory"] == "16Gi"
    assert resources["limits"]["memory"] == "16Gi"
    assert pod_spec(job)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod_spec(job)["tolerations"]


def test_preprocessing_pod_runs_on_cpu_nodes_with_as_many_decode_workers_as_cpus(step_jobs):
    job = step_jobs["preprocessed_images"]
    resources = container(job)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert resources["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert pod_spec(job)["nodeSelector"] == {"node-pool": "cpu"}
    assert not pod_spec(job).get("tolerations")
    assert env(job)["INFERENCE_DECODE_WORKERS"] == env(job)["OMP_NUM_THREADS"] == resources["limits"]["cpu"]


def test_no_pod_but_predictions_asks_for_a_gpu(step_jobs):
    for key, job in step_jobs.items():
        if key == "prediction_files":
            continue
        resources = container(job)["resources"]
        assert GPU not in resources.get("requests", {}) and GPU not in resources.get("limits", {}), key
        assert "nvidia.com/gpu.present" not in pod_spec(job).get("nodeSelector", {}), key
        assert not pod_spec(job).get("tolerations"), key


def test_small_steps_get_small_cpu_pods(step_jobs):
    for key in ("image_manifest", "prediction_results"):
        job = step_jobs[key]
        requests = container(job)["resources"]["requests"]
        assert requests["cpu"] == "500m" and pod_spec(job)["nodeSelector"] == {"node-pool": "cpu"}, key
    checks = [key for key in step_jobs if key not in ASSET_STEPS]
    assert checks
    for key in checks:  # asset checks: step_k8s_config, not the code server's resources
        assert container(step_jobs[key])["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}, key


def test_every_pod_runs_the_code_location_image_with_its_env_secret_and_volume(step_jobs):
    deployment = user_deployment(helm_values())
    expected_env = {item["name"]: item["value"] for item in deployment["env"]}
    assert {"INFERENCE_IMAGE_ROOT", "INFERENCE_WORK_DIR", "INFERENCE_SHARED_DIR", "INFERENCE_DUCKDB_PATH"} <= set(
        expected_env
    )
    assert expected_env["INFERENCE_EXECUTOR"] == "k8s"
    for key, job in step_jobs.items():
        assert container(job)["image"] == deployment_image(deployment) == "inference-assets:0.1.0", key
        assert expected_env.items() <= env(job).items(), key
        assert {"secretRef": {"name": "inference-aws"}} in container(job)["envFrom"], key
        assert {"name": "inference-data", "mountPath": "/data"} in container(job)["volumeMounts"], key
        assert {"name": "inference-data", "persistentVolumeClaim": {"claimName": "inference-data"}} in pod_spec(job)[
            "volumes"
        ], key


@pytest.mark.fast
def test_helm_values_use_the_k8s_run_launcher_queue_and_pools():
    values = helm_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = user_deployment(values)
    assert values["dagster-user-deployments"]["enabled"] is True
    assert deployment["image"]["repository"] == "inference-assets" and deployment["image"]["tag"]
    assert deployment["codeServerArgs"] == ["-m", "inference_assets.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert {"name": "inference-aws"} in deployment["envSecrets"]
    assert all(set(item) == {"name", "value"} and isinstance(item["value"], str) for item in deployment["env"])
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] > 0
    # The chart refuses a run limit in both places.
    assert "maxConcurrentRuns" not in values["concurrency"].get("runs", {})
    assert values["concurrency"]["enabled"] is True and values["concurrency"]["pools"]["defaultLimit"] == 1


@pytest.mark.fast
def test_kubernetes_executor_config_validates():
    executor = kubernetes_executor()
    assert isinstance(executor, ExecutorDefinition)
    assert EXECUTOR_CONFIG_PATH == PROJECT_ROOT / "deploy" / "k8s" / "executor.yaml"
    resolved = validate_run_config(k8s_asset_job(), {})
    (config,) = resolved["execution"].values()
    assert config["per_step_k8s_config"]["prediction_files"]["container_config"]["resources"]["limits"][GPU] == "1"


@pytest.mark.fast
def test_kubernetes_executor_without_dagster_k8s_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # what `import dagster_k8s` meets without the extra
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[k8s\]'"):
        kubernetes_executor()
