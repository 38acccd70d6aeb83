#!/bin/sh
# Entry point of the components image.
#
# Spark on Kubernetes (spark-submit in cluster mode, as the Spark operator runs it) starts the
# driver pod with the arguments "driver --properties-file FILE --class ... APP [ARGS]" and each
# executor pod with "executor" and its settings in the environment; it expects the image's entry
# point to turn those into a Spark process. Everything else (KFP's `python3 -m
# kfp.dsl.executor_main ...`, `spark-class ...`, `ctpipe submit ...`) runs exactly as given.
# Spark itself comes from the pyspark package in /opt/ctpipe, with the s3a jars in its jars/.
set -eu

spark_home() {
    python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'
}

case "${1:-}" in
    driver)
        shift
        SPARK_HOME="${SPARK_HOME:-$(spark_home)}"
        export SPARK_HOME
        # Client mode inside the driver pod: this process is the driver; the properties file the
        # submission mounted names the master (k8s://...), the executors' image and their settings.
        exec "$SPARK_HOME/bin/spark-submit" \
            --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}" \
            --deploy-mode client "$@"
        ;;
    executor)
        shift
        SPARK_HOME="${SPARK_HOME:-$(spark_home)}"
        export SPARK_HOME
        # Every setting comes from the environment the driver gave the executor pod.
        # shellcheck disable=SC2086  # SPARK_JAVA_OPTS holds several options on purpose
        exec java ${SPARK_JAVA_OPTS:-} \
            -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
            -cp "$SPARK_HOME/jars/*" \
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
            --driver-url "${SPARK_DRIVER_URL}" \
            --executor-id "${SPARK_EXECUTOR_ID}" \
            --cores "${SPARK_EXECUTOR_CORES}" \
            --app-id "${SPARK_APPLICATION_ID}" \
            --hostname "${SPARK_EXECUTOR_POD_IP}" \
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
            --podName "${SPARK_EXECUTOR_POD_NAME:-$(hostname)}" \
            "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
