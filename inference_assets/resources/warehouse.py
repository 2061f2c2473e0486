"""The DuckDB database resource: dagster-duckdb's, with a fail-fast path check and lock waiting."""

from contextlib import contextmanager

from dagster import InitResourceContext, get_dagster_logger
from dagster_duckdb import DuckDBResource
from pydantic import Field

from inference_assets.core.warehouse.database import check_database_path, connect_waiting_for_lock
from inference_assets.settings import variables_named


class WarehouseResource(DuckDBResource):
    """``DuckDBResource`` that checks its folder when a step starts and, while another process
    holds the file's lock, waits with a log line instead of failing (DuckDB has one writer)."""

    lock_timeout_seconds: float = Field(
        default=120.0, description="How long to wait for another process to release the DuckDB file."
    )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.check_configuration()

    def check_configuration(self) -> None:
        """A database path whose folder exists and is not itself a folder."""
        with variables_named():
            check_database_path(self.database)

    @contextmanager
    def get_connection(self):
        conn = connect_waiting_for_lock(
            self.database,
            timeout=self.lock_timeout_seconds,
            on_wait=get_dagster_logger().warning,
            config={"custom_user_agent": "dagster", **self.connection_config},
        )
        try:
            yield conn
        finally:
            conn.close()
