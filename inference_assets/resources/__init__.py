"""The code location's resources, in one place, one job each (resource key: class):

- ``storage``: :class:`StorageResource`: where images come from (a folder, a bucket, a table of
  locations, a database), the work area the intermediate files go to, and its shared mirror;
- ``model``: :class:`ModelResource`: which classifier runs, its class names and card, the batch
  size and top-k;
- ``device``: :class:`DeviceResource`: where and how inference runs (device, precision, runtime,
  a GPU taken by an explicit ``acquire_device``), and how many threads decode images;
- ``duckdb``: :class:`WarehouseResource`: the DuckDB database (dagster-duckdb's resource, with lock
  waiting);
- ``quality_gate``: :class:`QualityGateResource`: the thresholds of the configurable checks.

``definitions.default_resources`` builds them from the environment.
"""

from inference_assets.resources.device import DeviceResource
from inference_assets.resources.model import ModelResource
from inference_assets.resources.quality_gate import QualityGateResource
from inference_assets.resources.storage import StorageResource
from inference_assets.resources.warehouse import WarehouseResource

__all__ = ["DeviceResource", "ModelResource", "QualityGateResource", "StorageResource", "WarehouseResource"]
