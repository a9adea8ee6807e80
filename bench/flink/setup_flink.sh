#!/usr/bin/env bash
# Gets what the Flink runs need, from the package registries only, into ${IMCAP_FLINK_DIR:-~/.cache/imcap/flink}:
#   job-server.jar   Beam's Flink 1.19 job server (built from Maven Central artifacts by pom.xml, ~160 MB)
#   flink-1.19.3/    a standalone Flink distribution: bin/ and conf/ from PyPI's apache-flink wheel, lib/ opt/
#                    plugins/ from PyPI's apache-flink-libraries sdist (together they are the Flink binary release)
# Idempotent: what is already there is kept. Prints the two paths.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${IMCAP_FLINK_DIR:-$HOME/.cache/imcap/flink}
flink_version=1.19.3
python=${PYTHON:-python3}
mkdir -p "$target"

if [ ! -s "$target/job-server.jar" ]; then
  build=$(mktemp -d)
  cp "$here/pom.xml" "$build/"
  (cd "$build" && mvn -B -q package)
  mv "$build/target/beam-runners-flink-1.19-job-server-2.62.0.jar" "$target/job-server.jar"
  rm -rf "$build"
fi

dist="$target/flink-$flink_version"
if [ ! -x "$dist/bin/start-cluster.sh" ]; then
  downloads=$(mktemp -d)
  "$python" -m pip download --quiet --no-deps --no-binary apache-flink-libraries -d "$downloads" \
    "apache-flink-libraries==$flink_version"
  "$python" -m pip download --quiet --no-deps --only-binary :all: --python-version 3.11 -d "$downloads" \
    "apache-flink==$flink_version"
  mkdir -p "$downloads/libraries" "$downloads/wheel" "$dist.partial"
  tar -xzf "$downloads"/apache[-_]flink[-_]libraries-*.tar.gz -C "$downloads/libraries" --strip-components=1
  (cd "$downloads/wheel" && "$python" -m zipfile -e "$downloads"/apache_flink-[0-9]*.whl .)
  cp -r "$downloads/libraries/deps/lib" "$downloads/libraries/deps/opt" "$downloads/libraries/deps/plugins" \
    "$dist.partial/"
  mkdir -p "$dist.partial/bin" "$dist.partial/log"
  cp "$downloads/libraries/deps/bin/"*.jar "$dist.partial/bin/" 2>/dev/null || true
  cp "$downloads/wheel/pyflink/bin/"* "$dist.partial/bin/"
  cp -r "$downloads/wheel/pyflink/conf" "$dist.partial/conf"
  chmod +x "$dist.partial/bin/"*.sh "$dist.partial/bin/flink" 2>/dev/null || true
  rm -rf "$dist" && mv "$dist.partial" "$dist"
  rm -rf "$downloads"
fi
echo "$target/job-server.jar"
echo "$dist"
