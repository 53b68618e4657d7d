"""Render one notebook: papermill with parameters, then self-contained HTML without code cells.

``render_notebook`` is the one entry point every caller uses (the fleet report, the dispute
packet, the demo). The notebook writes its own JSON results sidecar through
``kernel.audit.write_results``; the path is injected as the ``results_path`` parameter, and the
verdict in the returned ``RenderResult`` is read from that sidecar, never scraped from outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kernel.audit.results import read_results
from kernel.errors import KernelError

__all__ = [
    "DEFAULT_EXECUTION_TIMEOUT_S",
    "KERNEL_NAME",
    "KERNEL_START_ATTEMPTS",
    "KERNEL_START_TIMEOUT_S",
    "NotebookFailed",
    "RenderResult",
    "notebook_to_html",
    "render_notebook",
]

# Per-cell execution timeout handed to papermill (TIGER_STYLE: pass it explicitly).
DEFAULT_EXECUTION_TIMEOUT_S = 300
# Seconds papermill waits for a kernel to start before giving up on an attempt.
KERNEL_START_TIMEOUT_S = 60
# A kernel that fails to start (port race, slow disk) gets one more try; a failing cell never does.
KERNEL_START_ATTEMPTS = 2
# The venv's own kernel: jupyter_client runs it with the interpreter that runs papermill.
KERNEL_NAME = "python3"
# Headless kernels log only what is fatal. jupyter_client interrupts every kernel it shuts down
# and ipykernel 7 logs that SIGINT as "ERROR | KeyboardInterrupt caught in kernel", next to a
# warning about its loopback TCP transport: noise that reads like a failure in `make demo`.
# A notebook's own errors still fail the render through papermill.
HEADLESS_KERNEL_ARGS = ("--IPKernelApp.log_level=CRITICAL",)
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

_EXTERNAL_RESOURCE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


class NotebookFailed(KernelError):
    """A notebook could not be executed or converted; ``ipynb_path`` keeps the error notebook."""

    code = "notebook_failed"

    def __init__(self, message: str, *, ipynb_path: Path, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.ipynb_path = ipynb_path


@dataclass(frozen=True)
class RenderResult:
    """Where a rendered notebook's files are, and the verdict its results sidecar recorded."""

    ipynb_path: Path
    html_path: Path
    results_path: Path
    verdict: str
    results: dict[str, Any]


def render_notebook(
    notebook: Path,
    parameters: dict[str, str],
    out_dir: Path,
    *,
    timeout_s: int = DEFAULT_EXECUTION_TIMEOUT_S,
    name: str | None = None,
    kernel_name: str = KERNEL_NAME,
) -> RenderResult:
    """Execute ``notebook`` with ``parameters`` into ``out_dir`` and convert it to offline HTML.

    Args:
        notebook: The source notebook (must have a cell tagged ``parameters``).
        parameters: Values for the parameters cell, all strings. ``results_path`` defaults to
            ``<out_dir>/<name>.results.json``.
        out_dir: Directory for ``<name>.ipynb``, ``<name>.html`` and ``<name>.results.json``.
        timeout_s: Per-cell execution timeout in seconds.
        name: File stem of the outputs; defaults to the notebook's stem.
        kernel_name: Jupyter kernel to run.

    Returns:
        The paths and the verdict written by the notebook.

    Raises:
        NotebookFailed: A cell raised, timed out, the kernel did not start twice, the sidecar is
            missing, or the HTML could not be written. The executed notebook is kept for diagnosis.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    # Absolute paths: the kernel runs in the notebook's directory, not the caller's.
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or notebook.stem
    ipynb_path = out_dir / f"{stem}.ipynb"
    html_path = out_dir / f"{stem}.html"
    params = {key: str(value) for key, value in parameters.items()}
    results_path = Path(params.get("results_path") or out_dir / f"{stem}.results.json").resolve()
    params["results_path"] = str(results_path)
    for stale in (html_path, results_path):
        stale.unlink(missing_ok=True)

    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        try:
            papermill.execute_notebook(
                str(notebook),
                str(ipynb_path),
                parameters=params,
                kernel_name=kernel_name,
                execution_timeout=timeout_s,
                start_timeout=KERNEL_START_TIMEOUT_S,
                progress_bar=False,
                log_output=False,
                cwd=str(notebook.parent),
                extra_arguments=list(HEADLESS_KERNEL_ARGS),
            )
            break
        except PapermillExecutionError as exc:
            detail = f"{exc.ename}: {exc.evalue}".strip()
            raise NotebookFailed(
                f"{notebook.name} failed in cell {exc.exec_count}: {detail} (see {ipynb_path})",
                ipynb_path=ipynb_path,
            ) from exc
        except CellTimeoutError as exc:
            raise NotebookFailed(
                f"{notebook.name} timed out after {timeout_s}s in one cell (see {ipynb_path})",
                ipynb_path=ipynb_path,
                code="notebook_timeout",
            ) from exc
        except Exception as exc:  # the kernel did not start: retried once, then reported
            if attempt < KERNEL_START_ATTEMPTS:
                continue
            raise NotebookFailed(
                f"{notebook.name}: kernel failed {KERNEL_START_ATTEMPTS} times: {type(exc).__name__}: {exc}",
                ipynb_path=ipynb_path,
                code="kernel_start_failed",
            ) from exc

    html_path.write_text(notebook_to_html(ipynb_path), encoding="utf-8")
    try:
        results = read_results(results_path)
    except KernelError as exc:
        raise NotebookFailed(f"{notebook.name}: {exc.message}", ipynb_path=ipynb_path, code=exc.code) from exc
    return RenderResult(ipynb_path, html_path, results_path, str(results["verdict"]), results)


@lru_cache(maxsize=1)
def _html_exporter() -> Any:
    # Built once per process: loading the templates costs more than converting one notebook.
    from nbconvert import HTMLExporter

    return HTMLExporter(  # type: ignore[no-untyped-call]
        template_name="offline",
        extra_template_basedirs=[str(TEMPLATES_DIR)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )


def notebook_to_html(ipynb_path: Path) -> str:
    """Self-contained HTML of an executed notebook: no code cells, no prompts, nothing from the network."""
    import nbformat

    nb = nbformat.read(str(ipynb_path), as_version=4)  # type: ignore[no-untyped-call]
    # Papermill's parameter cells are plumbing, not part of the report.
    nb.cells = [c for c in nb.cells if not {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]
    nb.metadata.pop("widgets", None)
    body, _ = _html_exporter().from_notebook_node(nb)
    if _EXTERNAL_RESOURCE.search(body):
        raise NotebookFailed(f"{ipynb_path.name}: HTML would load a network resource", ipynb_path=ipynb_path)
    return str(body)
