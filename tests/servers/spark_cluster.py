"""A Spark standalone master and workers on 127.0.0.1 (``batch_predict`` against a real cluster)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tests.servers.process import ServerProcess, free_ports, start_and_wait, unavailable, wait_for_port


class SparkStandaloneCluster:
    """A Spark standalone master and workers on 127.0.0.1, started with the pyspark package's ``spark-class``.

    Every daemon binds 127.0.0.1 (``SPARK_LOCAL_IP``) on free ports, keeps its work folder
    under ``root`` and runs in its own process group, so :meth:`stop` ends exactly these
    processes and the executors they launched.
    """

    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> None:
        """Start a master and ``workers`` workers, and wait until every worker has registered.

        Args:
            root: Folder for logs and the workers' work folders.
            workers: Number of workers.
            cores: Cores each worker offers.
            memory: Memory each worker offers (executors default to 1g, so at least that).
        """
        import json
        import urllib.request

        from pyspark.find_spark_home import _find_spark_home

        spark_class = Path(_find_spark_home()) / "bin" / "spark-class"
        if not os.access(spark_class, os.X_OK):
            unavailable(f"{spark_class} is missing or not executable")
        if not shutil.which("java"):
            unavailable("java is not installed; Spark needs Java 17+")

        env = {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root / "logs"), "SPARK_NO_DAEMONIZE": "1"}
        # The master's two ports and each worker's two, drawn together so that no two are the same.
        self.port, self.webui_port, *worker_ports = free_ports(2 + 2 * workers)
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[ServerProcess] = []
        try:
            master = start_and_wait(
                "spark-master",
                [
                    str(spark_class),
                    "org.apache.spark.deploy.master.Master",
                    *("--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.webui_port)),
                ],
                root / "master.log",
                env=env,
                port=self.port,
                # The workers' registration is read from the web UI's JSON status below.
                ready=lambda process: wait_for_port(self.webui_port, process=process),
            )
            self.processes.append(master)
            for index in range(workers):
                work_dir = root / f"worker-{index}"
                work_dir.mkdir(parents=True, exist_ok=True)
                self.processes.append(
                    ServerProcess(
                        f"spark-worker-{index}",
                        [
                            str(spark_class),
                            "org.apache.spark.deploy.worker.Worker",
                            *("--host", "127.0.0.1", "--port", str(worker_ports[2 * index])),
                            *("--webui-port", str(worker_ports[2 * index + 1])),
                            *("--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir), self.url),
                        ],
                        root / f"worker-{index}.log",
                        env=env,
                    )
                )
            # The master's JSON status lists the workers that registered.
            deadline = time.monotonic() + 120
            alive = 0
            while time.monotonic() < deadline:
                for process in self.processes:
                    if process.popen.poll() is not None:
                        raise RuntimeError(
                            f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
                        )
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=2) as response:
                        alive = int(json.load(response).get("aliveworkers", 0))
                except (OSError, ValueError):  # not listening yet, or HTML until the master is elected leader
                    alive = 0
                if alive >= workers:
                    break
                time.sleep(0.5)
            else:
                raise TimeoutError(f"only {alive} of {workers} Spark workers registered:\n{master.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the workers (and their executors), then the master."""
        for process in reversed(self.processes):
            process.stop()
