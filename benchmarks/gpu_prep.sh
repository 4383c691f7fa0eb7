#!/usr/bin/env bash
# Run HERE (the development machine), in the repository root, before the device call that runs
# benchmarks/gpu_check.sh: it puts in ignored folders what that call carries (see
# benchmarks/README.md, "On a lent GPU"):
#   .whl/           the wheels the GPU image lacks (MLflow, Optuna and what they need; ~40 MB),
#                   for Python 3.12 on x86-64, at the versions of this checkout's venv;
#   .bench/thucnews the 45k THUCNews training titles with their dev/test files (3.5 MB).
# THUCNEWS=DIR names another copy of the titles folder (default ../shared/data/news/THUCNews/data).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for folder in /.whl/ /.bench/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
source="${THUCNEWS:-../shared/data/news/THUCNews/data}"
mkdir -p .bench/thucnews
cp "$source"/{train,dev,test,class}.txt .bench/thucnews/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 -d .whl \
  mlflow==3.17.2 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 \
  mako==1.4.3 colorlog==6.12.0 graphene==3.4.3 graphql-core==3.2.14 graphql-relay==3.2.0 flask==3.1.3 \
  flask-cors==6.0.5 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 gunicorn==26.2.0 huey==3.5.4 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 \
  opentelemetry-semantic-conventions==0.66b2 databricks-sdk==0.167.0 google-auth==2.63.0 cachetools==7.3.3 \
  pyasn1==0.6.5 pyasn1-modules==0.4.2 docker==7.2.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 \
  sqlparse==0.6.1 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 prettytable==3.19.0 wcwidth==0.9.4 \
  python-dotenv==1.2.4 itsdangerous==2.2.0 blinker==1.9.0 importlib-metadata==9.1.0 skops==0.16.0
du -sh .whl .bench
