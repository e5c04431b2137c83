# The Airflow image of the production stack (docker-compose.yaml): Airflow 3 with the project's
# pinned requirements, the tfmlops package, the DAGs and plugins, and the TF.js Node runtime.
#   docker compose build        (or: docker build -t tfmlops-airflow:0.1.0 .)
# Build args: INSTALL_CHROMIUM=true adds Debian's chromium for the TF.js browser checks.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG NODE_IMAGE=node:20.19.5-bookworm-slim

FROM ${NODE_IMAGE} AS node

FROM ${AIRFLOW_IMAGE}
ARG INSTALL_CHROMIUM=false

USER root
# Node 20 (the TF.js checks of tf_optimize_export run the web/ predictor under Node).
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && if [ "${INSTALL_CHROMIUM}" = "true" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends chromium \
      && apt-get autoremove -yqq --purge && apt-get clean && rm -rf /var/lib/apt/lists/*; \
    fi \
 && mkdir -p /opt/tfmlops/serving/models /opt/tfmlops/serving/config /opt/airflow/var \
 && chown -R airflow:0 /opt/tfmlops /opt/airflow/var

# Every process that touches TensorFlow runs on tf_keras (tfmot and TF.js layers need Keras 2).
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    TFMLOPS_MNIST_DIR=/opt/tfmlops/data/mnist \
    TFMLOPS_DATA_DIR=/opt/tfmlops/data \
    TFMLOPS_WEB_DIR=/opt/tfmlops/web

USER airflow
# 1. The direct pins, resolved against the full lock as constraints (apache-airflow named again
#    so pip can never move the image's Airflow), 2. tensorflowjs without its conflicting deps.
COPY --chown=airflow:0 requirements.txt requirements-lock.txt requirements-nodeps.txt /opt/tfmlops/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/tfmlops/requirements.txt -c /opt/tfmlops/requirements-lock.txt \
 && pip install --no-cache-dir --no-deps -r /opt/tfmlops/requirements-nodeps.txt

# 3. TF.js runtime for the web/ checks (exact versions from web/package-lock.json), before any
#    source: a code change rebuilds from its COPY on, these installs come from the build cache.
COPY --chown=airflow:0 web/package.json web/package-lock.json /opt/tfmlops/web/
RUN npm ci --prefix /opt/tfmlops/web --omit=dev --no-audit --no-fund && npm cache clean --force

# 4. The project package (tfmlops from include/, and the tf-serving-local script), the web checks.
COPY --chown=airflow:0 pyproject.toml /opt/tfmlops/src/
COPY --chown=airflow:0 include /opt/tfmlops/src/include
RUN pip install --no-cache-dir --no-deps /opt/tfmlops/src
COPY --chown=airflow:0 web/scripts /opt/tfmlops/web/scripts
COPY --chown=airflow:0 web/static /opt/tfmlops/web/static

# 5. Data shipped with the project, the init scripts, the DAGs and plugins.
COPY --chown=airflow:0 data/mnist /opt/tfmlops/data/mnist
COPY --chown=airflow:0 data/examples /opt/tfmlops/data/examples
COPY --chown=airflow:0 docker /opt/tfmlops/docker
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
