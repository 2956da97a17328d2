# The node image for cluster.yaml: Ray's own image with this project and its pinned
# dependencies installed, so that a new node (a spot CPU worker above all) starts Ray at once
# instead of pip-installing torch and the rest. README.md ("Scaling out", "Node image") builds,
# pushes and switches cluster.yaml to it.
#
#   docker build -t stx-platform:2.60.0-py311-cpu .                          # head, CPU workers
#   docker build --build-arg FLAVOR=gpu -t stx-platform:2.60.0-py311-gpu .   # GPU workers
#
# The base tag's Ray and Python are those of constraints.txt and of cluster.yaml's images
# (tests/test_image.py checks them): change them together.
ARG FLAVOR=cpu
FROM rayproject/ray:2.60.0-py311-${FLAVOR}
ARG FLAVOR

# The pins this image was built from. cluster.yaml's setup commands skip their pip install on
# a node whose checkout has the same constraints.txt and pyproject.toml as these.
ENV STX_IMAGE_PINS=/home/ray/stx-image

# 1. The dependencies alone: pyproject.toml's list at constraints.txt's pins, plus boto3 for the
#    head's autoscaler (as head_setup_commands). This layer is rebuilt only when those two files
#    change, not when the code does. CPU: torch's CPU build from PyTorch's index (torch==2.13.0
#    matches its 2.13.0+cpu); GPU: PyPI's default Linux build, which carries CUDA.
#    (1000:100 is the base image's `ray` user and `users` group.)
COPY --chown=1000:100 constraints.txt pyproject.toml $STX_IMAGE_PINS/
RUN case "$FLAVOR" in \
      cpu) index="--extra-index-url https://download.pytorch.org/whl/cpu" ;; \
      gpu) index="" ;; \
      *) echo "FLAVOR is cpu or gpu, not '$FLAVOR'" >&2; exit 1 ;; \
    esac \
 && python -c "import sys, tomllib; print('\n'.join(tomllib.load(open(sys.argv[1], 'rb'))['project']['dependencies']))" \
      $STX_IMAGE_PINS/pyproject.toml > /tmp/stx-requirements.txt \
 && pip install --no-cache-dir -c $STX_IMAGE_PINS/constraints.txt $index -r /tmp/stx-requirements.txt boto3 \
 && rm /tmp/stx-requirements.txt

# 2. The project itself, not editable: the image does not depend on a mounted checkout (jobs
#    still run the code that `ray job submit --working-dir .` ships). Its dependencies are
#    layer 1's, hence --no-deps; the copy of the source is removed once installed.
COPY --chown=1000:100 pyproject.toml README.md /tmp/stx-src/
COPY --chown=1000:100 stx_platform /tmp/stx-src/stx_platform
RUN pip install --no-cache-dir --no-deps -c $STX_IMAGE_PINS/constraints.txt /tmp/stx-src \
 && rm -rf /tmp/stx-src

# 3. Smoke check, at build time: the packages import, every dependency is at its pin, torch is
#    the build this flavor needs, `stx --help` runs.
COPY --chown=1000:100 deploy/image/smoke.py $STX_IMAGE_PINS/
RUN python $STX_IMAGE_PINS/smoke.py "$FLAVOR"
