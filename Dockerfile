# The optimove-netmera image: the official Airflow image plus the pinned dependencies, the installed package, the
# DAGs, the plugin and the settings file. One image for every process (api-server, scheduler, dag-processor,
# triggerer, workers, the sandbox); docker-compose.yaml builds it, and the official Helm chart can run it as is.
#
# The tag must agree with the apache-airflow pin in requirements.txt and with the Python constraints.txt was
# resolved for (tests/deploy/test_compose.py checks both).
FROM apache/airflow:3.3.2-python3.11

# The base image's default user; pip installs into ~airflow/.local (PIP_USER=true in the official image).
USER airflow

# Dependencies first, so that editing the code does not reinstall them. The test and lint tooling pinned at the end
# of requirements.txt (pytest, pytest-timeout, jsonschema, ruff: a few MB) is installed too, on purpose: filtering
# the file here could silently drop a runtime pin added below that comment, and the image can then run the test
# suite against the very dependency set it ships. `pip check` fails the build on an inconsistent set.
COPY --chown=airflow:0 requirements.txt constraints.txt /tmp/optimove-netmera/
RUN pip install --no-cache-dir -r /tmp/optimove-netmera/requirements.txt -c /tmp/optimove-netmera/constraints.txt \
    && pip check

# The package, installed (not editable, not mounted): DAG files, the triggerer, the workers and the API server's
# plugin all import optimove_netmera from site-packages. --no-deps: everything it needs is pinned above.
COPY --chown=airflow:0 pyproject.toml README.md /tmp/optimove-netmera/
COPY --chown=airflow:0 include/ /tmp/optimove-netmera/include/
RUN pip install --no-cache-dir --no-deps /tmp/optimove-netmera \
    && rm -rf /tmp/optimove-netmera \
    && pip check

# DAGs and the plugin go to the image's default dags_folder and plugins_folder (AIRFLOW_HOME=/opt/airflow).
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

# An installed package has no repository around it, so it cannot find config/optimove_netmera.yaml by itself:
# the settings file is named explicitly. Override any key with OPTIMOVE_NETMERA__<SECTION>__<KEY>, or mount
# another file here.
COPY --chown=airflow:0 config/optimove_netmera.yaml /opt/airflow/config/optimove_netmera.yaml
ENV OPTIMOVE_NETMERA_CONFIG=/opt/airflow/config/optimove_netmera.yaml

# Where docker-compose.yaml keeps SimpleAuthManager's passwords file (a named volume inherits this directory's
# owner, so the airflow user can write it without a root init step).
RUN mkdir -p /opt/airflow/auth

# Fail the build, not the first task, if the installed package or its settings file does not load.
RUN python -c "from optimove_netmera.settings import load_settings; load_settings(); import optimove_netmera.hooks"
