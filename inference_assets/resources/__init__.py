"""The code location's resources, in one place, one job each (resource key: class):

- ``source``: :class:`ImageSourceResource`: where images come from (a folder, a bucket, a table of
  locations, a database);
- ``work_area``: :class:`WorkAreaResource`: the work folder the intermediate files go to, and its
  shared mirror;
- ``object_store``: :class:`ObjectStoreResource`: the S3 endpoint and credentials, nested in both
  ``source`` and ``work_area`` (set once, at launch);
- ``model``: :class:`ModelResource`: which classifier runs, its class names and card, the batch
  size and top-k;
- ``models``: :class:`ModelListResource`: the model list: more models run beside the primary one,
  and ensembles of them (``core/models/model_list.py``);
- ``device``: :class:`DeviceResource`: where and how inference runs (device, precision, runtime,
  a GPU taken by an explicit ``acquire_device``);
- ``preprocessing``: :class:`PreprocessingResource`: how images are decoded (threads, JPEG draft
  mode, the largest image decoded);
- ``duckdb``: :class:`WarehouseResource`: the DuckDB database (dagster-duckdb's resource, with lock
  waiting);
- ``quality_gate``: :class:`QualityGateResource`: the thresholds of the configurable checks.

``definitions.default_resources`` builds them from the environment.
"""

from inference_assets.resources.device import DeviceResource
from inference_assets.resources.model import ModelResource
from inference_assets.resources.models import ModelListResource
from inference_assets.resources.object_store import ObjectStoreResource
from inference_assets.resources.preprocessing import PreprocessingResource
from inference_assets.resources.quality_gate import QualityGateResource
from inference_assets.resources.source import ImageSourceResource
from inference_assets.resources.warehouse import WarehouseResource
from inference_assets.resources.work_area import WorkAreaResource

__all__ = [
    "DeviceResource",
    "ImageSourceResource",
    "ModelListResource",
    "ModelResource",
    "ObjectStoreResource",
    "PreprocessingResource",
    "QualityGateResource",
    "WarehouseResource",
    "WorkAreaResource",
]
