"""The MLflow server app that ``privbench ui`` runs: MLflow's own, plus one page that keeps the UI
in its training-runs mode.

MLflow 3.18's UI picks its mode (the "Model training" side bar or the GenAI one, with
"Evaluations", "Traces", "Judges") from the ``workflowType`` URL parameter when a URL carries one,
else from the browser's ``localStorage["mlflow.workflowType_v1"]``, else GenAI. The experiment tag
``mlflow.experimentKind`` is not read while the UI's workflow switch is on (it always is in 3.18).
A link with ``workflowType=machine_learning`` therefore opens the runs table in training mode, but
the run and compare pages reached by clicking carry no parameter and fall back to GenAI.

:data:`OPEN_PATH` is a tiny page on the MLflow origin that stores ``machine_learning`` in that
``localStorage`` key, then replaces itself with the MLflow route in its fragment: ``privbench ui``
prints ``http://127.0.0.1:5000/privbench/open#/experiments/1/runs?...``, and every page reached
from there stays in training mode. Everything else goes to MLflow's app unchanged.

The page also gives each setting's group row its own chart colour: the UI takes a group's colour
from ``localStorage["experimentRunColors"]`` (else a hash of the group id, which gave two pairs of
settings one colour), so before it redirects, the page reads the experiment tag
``privbench.groupColors`` that :func:`bench.mlflow_view.write_suite_view` wrote (one request, at
most 3 s) and copies it into that key. Runs carry their colour in their own ``mlflow.runColor`` tag.

``mlflow server --app-name privbench`` finds :data:`app` through the ``mlflow.app`` entry point
in ``pyproject.toml``; MLflow's own app is imported on the first request (the ``mlflow server``
command imports this module only to look at :data:`app`, before it sets the server's store).
"""

from __future__ import annotations

import json

OPEN_PATH = "/privbench/open"
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"  # the UI's useLocalStorage: f"{key}_v{version}", a JSON value
WORKFLOW_TYPE = "machine_learning"

GROUP_COLORS_TAG = "privbench.groupColors"  # bench.mlflow_view.GROUP_COLORS_TAG (not imported: MLflow-free import)
COLORS_STORAGE_KEY = "experimentRunColors"  # the UI's localStorage map of group id -> colour (a plain JSON object)

OPEN_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>privbench: opening MLflow</title></head>
<body>
<script>
try {{
  window.localStorage.setItem({json.dumps(WORKFLOW_STORAGE_KEY)}, {json.dumps(json.dumps(WORKFLOW_TYPE))});
}} catch (e) {{}}
const go = () => window.location.replace("/" + (window.location.hash || "#/"));
const exp = (window.location.hash.match(/^#\/experiments\/([0-9A-Za-z_-]+)/) || [])[1];
if (!exp || !window.fetch) {{ go(); }} else {{
  const timer = setTimeout(go, 3000);
  fetch("/ajax-api/2.0/mlflow/experiments/get?experiment_id=" + encodeURIComponent(exp), {{credentials: "same-origin"}})
    .then(r => r.ok ? r.json() : {{}})
    .then(body => {{
      const tags = ((body.experiment || {{}}).tags || []).filter(t => t.key === {json.dumps(GROUP_COLORS_TAG)});
      if (tags.length) {{
        const colors = JSON.parse(tags[0].value);
        let kept = {{}};
        try {{ kept = JSON.parse(window.localStorage.getItem({json.dumps(COLORS_STORAGE_KEY)}) || "{{}}") || {{}}; }} catch (e) {{}}
        window.localStorage.setItem({json.dumps(COLORS_STORAGE_KEY)}, JSON.stringify(Object.assign(kept, colors)));
      }}
    }})
    .catch(() => {{}})
    .finally(() => {{ clearTimeout(timer); go(); }});
}}
</script>
<noscript>Turn on JavaScript for the MLflow UI, then open <a href="/">the MLflow UI</a>.</noscript>
</body></html>
""".encode("utf-8")


class PrivbenchApp:
    """ASGI app: :data:`OPEN_PATH` answered here, everything else by ``mlflow.server.fastapi_app``."""

    def __init__(self) -> None:
        self._mlflow = None

    def _inner(self):
        if self._mlflow is None:
            from mlflow.server.fastapi_app import app as mlflow_app

            self._mlflow = mlflow_app
        return self._mlflow

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") == "http" and scope.get("path") == OPEN_PATH and scope.get("method") in ("GET", "HEAD"):
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-length", str(len(OPEN_PAGE)).encode()),
                ],
            })
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else OPEN_PAGE})
            return
        await self._inner()(scope, receive, send)


app = PrivbenchApp()
