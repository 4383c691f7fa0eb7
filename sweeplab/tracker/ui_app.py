"""MLflow's UI as ``sweep ui`` serves it: the model-training view, whatever page is opened first.

MLflow 3's UI has two views, GenAI (traces, judges, a welcome page) and model training (runs,
curves, the model registry). Which one a page shows comes from ``workflowType`` in the page's
address, else from the browser's local storage (``mlflow.workflowType_v1``, written only by the
sidebar's toggle), else GenAI; the experiment's ``mlflow.experimentKind`` tag, which sweeplab
sets to ``custom_model_development``, is not read (mlflow#24498). So a newcomer's browser that
follows a link without the parameter (a trial clicked in the runs side by side) lands in the
GenAI view, with no runs in sight.

This app is MLflow's own tracking server app with one addition: the page MLflow's UI starts
from (its ``index.html``) first stores the model-training view in the browser's local storage,
exactly as the sidebar's toggle would, before MLflow's scripts read it; keeps MLflow's assistant
panel from opening by itself on a first visit (it covers a third of the runs' page); and opens
the list of experiments instead of MLflow's welcome page (:data:`MODEL_TRAINING_SCRIPT`). Only that
page changes: every other response, an HTML artifact downloaded through ``/get-artifact`` among
them, is MLflow's byte for byte. The changed page carries no ``ETag`` or ``Last-Modified`` of MLflow's
file and is asked for whole every time (``Cache-Control: no-cache``), so a browser that kept the
plain page of an earlier ``mlflow ui`` on the same address is not told "not modified". It is offered to
``mlflow ui --app-name sweeplab`` through MLflow's app plugin entry point (``mlflow.app`` in
sweeplab's ``pyproject.toml``); ``sweep ui`` starts it so when it serves without a login (with
``--credentials`` MLflow's ``basic-auth`` app serves, and the links ``sweep ui`` prints still
carry ``workflowType=machine_learning``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_TRAINING_SCRIPT", "create_app"]

#: Stores the model-training view as the sidebar's toggle does (MLflow's useLocalStorage hook:
#: key ``{key}_v{version}``, the value as JSON); marks MLflow's assistant panel as already opened
#: once, which keeps it from opening by itself on a first visit (a user who opens it keeps it);
#: and sends the bare root (MLflow's welcome page) to the list of experiments, one per swept task.
MODEL_TRAINING_SCRIPT = (
    '<script>try{var s=window.localStorage;'
    's.setItem("mlflow.workflowType_v1",JSON.stringify("machine_learning"));'
    'if(s.getItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1")===null)'
    's.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1","true");'
    'if(!location.hash||location.hash==="#/")location.replace("#/experiments")}catch(e){}</script>')


def create_app() -> Any:
    """MLflow's tracking server app (the ASGI app under uvicorn, MLflow's default server; the
    Flask app under gunicorn or waitress) whose ``index.html`` starts in the model-training view."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as flask_app

    flask_app.before_request(_index_asked_whole)
    flask_app.after_request(_model_training_first)
    if _MLFLOW_SGI_NAME.get() != "uvicorn":
        return flask_app
    from mlflow.server.fastapi_app import create_fastapi_app

    return create_fastapi_app(flask_app)


#: The request headers that would let MLflow answer the start page with "304 Not Modified" (or a
#: part of it), judged by MLflow's file rather than by the page this app sends.
_CONDITIONAL_HEADERS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_MATCH",
                        "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF_RANGE", "HTTP_RANGE")


def _is_start_page() -> bool:
    """Whether this request is for the page MLflow's UI starts from: MLflow's ``serve`` route,
    ``/`` under the static prefix (``mlflow server --static-prefix``), which sends ``index.html``."""
    from flask import request
    from mlflow.server.handlers import _add_static_prefix

    return request.method in ("GET", "HEAD") and request.path == _add_static_prefix("/")


def _index_asked_whole() -> None:
    """Have MLflow send the start page whole: a browser revalidating the plain page it cached (its
    ``ETag``, its date) would otherwise get a 304 and keep that page, without the script."""
    from flask import request

    if _is_start_page():
        for header in _CONDITIONAL_HEADERS:
            request.environ.pop(header, None)


def _model_training_first(response: Any) -> Any:
    """Put :data:`MODEL_TRAINING_SCRIPT` at the top of the UI's start page, before its scripts;
    any other response goes out as MLflow made it."""
    if not _is_start_page() or response.mimetype != "text/html" or response.status_code != 200:
        return response
    response.direct_passthrough = False  # a file MLflow sends as it is: read it to change it
    page = response.get_data(as_text=True)
    if "<head>" in page and MODEL_TRAINING_SCRIPT not in page:
        response.set_data(page.replace("<head>", "<head>" + MODEL_TRAINING_SCRIPT, 1))
        # MLflow's validators describe its file, not this page: without them a browser asks for
        # the page whole each time (a kilobyte), never revalidating it against the plain file's.
        for header in ("ETag", "Last-Modified", "Expires"):
            del response.headers[header]
        response.headers["Cache-Control"] = "no-cache"
    return response
