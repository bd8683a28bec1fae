# The front door. `make help` lists the targets; every one works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
XRAY := $(BIN)/xray
BUILD ?= build
# The demo data set (synthetic, not medical data) and run.
PATIENTS ?= 240
SEED ?= 1
SYNTH_SIZE ?= 128
# xray synth --difficulty, 0 (easy caricature) to 1; 0.5 is calibrated for a test AUC in 0.85-0.97 (trainer/synth.py).
DIFFICULTY ?= 0.5
IMAGE_SIZE ?= 64
SHARDS ?= 4
# A fifth of the training patients for validation: the best epoch is chosen on it (44 images were too noisy).
VAL_FRACTION ?= 0.2
WORKERS ?= 2
PRESET ?= demo
DATA ?= $(BUILD)/shards
WORKDIR ?= $(BUILD)/run
PYTEST_ARGS ?=
# make test's pytest-xdist workers (tests/conftest.py: a module per worker, the cluster tests together); 0: one process.
TEST_WORKERS ?= 2
# Cluster runs: the project image, the overlay (xray/k8s/overlays/<OVERLAY>), and paths as the pods see them.
IMAGE ?=
TAG ?= 0.1.0
VARIANT ?= cpu
OVERLAY ?= local
NAMESPACE ?= xray
CLUSTER_DATA ?= /mnt/xray/shards
CLUSTER_WORKDIR ?= /mnt/xray/runs/train
CLUSTER_TUNE_DIR ?= /mnt/xray/runs/tune
# data-cluster: the folder name under /mnt/xray/incoming/ on the volume.
SRC ?=
DATASET ?= chest_xray
UPLOAD_DEST ?= /mnt/xray/incoming/$(DATASET)
STORAGE_CLASS ?=
# train-cluster / tune-cluster: a config file (local, or a path on the volume) and key=value overrides.
CONFIG ?=
OVERRIDES ?=
DEADLINE ?= 0
# train-cluster / tune-cluster: a Kueue LocalQueue (the Jobs start suspended; Kueue admits all workers or none).
QUEUE ?=
# Every cluster step: node labels its pods must run on, key=value[,key=value] (default none; docs/kubernetes.md),
# the service account its pods run as (GKE Workload Identity for gs:// data) and a registry's pull Secret.
NODE_SELECTOR ?=
SERVICE_ACCOUNT ?=
IMAGE_PULL_SECRET ?=
# export-cluster / deploy-serving / promote: where the versions live (default: models/ on the volume; or gs://...).
CLUSTER_MODEL_BASE ?=
WATCH_INTERVAL ?= 10
# xray jobs watch: seconds a pod may stay unable to start (image pull, scheduling, mount, crash loop) before make gives up.
STUCK_AFTER ?= 45
# The GPU overlay runs the GPU variant of the image (make image VARIANT=gpu TAG=<tag>-gpu).
CLUSTER_TAG = $(if $(filter gpu,$(OVERLAY)),$(patsubst %-gpu,%,$(TAG))-gpu,$(TAG))
JOB ?= xray-train
TUNE_DIR ?= $(BUILD)/tune
TRIALS ?= 4
TRIAL_EPOCHS ?= 3
PARALLEL ?= 2
# val_auc: after 3 epochs from scratch, val_loss mostly measures how settled the BatchNorm statistics are.
OBJECTIVE ?= val_auc
MODEL_BASE ?= $(BUILD)/models
SERVING_CONFIG ?= $(BUILD)/serving-config
# make serve: TF Serving at the version of our TensorFlow and tensorflow-serving-api (2.21). make deploy-serving
# runs the overlay's (the same) unless SERVING_IMAGE is set.
SERVING_IMAGE ?=
# The one place the Makefile names it; the overlays pin the same tag (tests/test_kube.py checks both agree).
TFSERVING_IMAGE = tensorflow/serving:2.21.0
# make image: the base image (any Python 3.11 with venv) and a CA bundle for pip behind a TLS-inspecting proxy.
BASE ?=
PIP_CERT ?=
# make cluster-up NODE=0: the control plane with KWOK nodes only (no container runs).
NODE ?= 1
# The local cluster's folder (state, kubeconfig, logs, the node's data).
CLUSTER_ROOT ?= $(abspath $(BUILD))/cluster
# make promote / promote-local: the label to move and where to (one of VERSION, FROM, ROLLBACK=1).
LABEL ?=
VERSION ?=
FROM ?=
ROLLBACK ?=
WAIT ?=
# make deploy-serving: the autoscaler's minimum number of replicas (default: the overlay's).
REPLICAS ?=
GRPC_PORT ?= 8500
REST_PORT ?= 8501
# make serve: more tensorflow_model_server flags (e.g. --load_retry_interval_micros=5000000) and docker run options.
SERVING_FLAGS ?=
DOCKER_RUN_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: bench help venv train tune export serve predict test mutate clean image push train-cluster tune-cluster deploy-serving status logs delete \
  cluster-build cluster-up cluster-kueue-up cluster-kueue-down cluster-down image-load volume image-set pin-serving record-digest data-cluster weights-cluster export-cluster tensorboard lock promote promote-local standin-load

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# The virtualenv installs exactly requirements.lock (pinned and hashed; the image installs the same file), then the
# project itself without dependencies.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

lock: $(VENV)/.installed ## re-resolve requirements.lock and requirements-gpu.lock from pyproject.toml (then make test)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes --universal --python-version 3.11 \
	  -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra test --extra gpu --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o requirements-gpu.lock
	echo "mutmut==3.8.1" | $(BIN)/uv pip compile - -c requirements.lock --generate-hashes --python-version 3.11 \
	  --no-header -o requirements-mutate.lock

venv: $(VENV)/.installed ## create .venv and install the project with its test extras

# The demo data is remade when one of its settings changes: the stamp's name carries them all.
DATA_KEY := patients$(PATIENTS)-seed$(SEED)-synth$(SYNTH_SIZE)-px$(IMAGE_SIZE)-shards$(SHARDS)-val$(VAL_FRACTION)-difficulty$(DIFFICULTY)
DATA_STAMP := $(BUILD)/.demo-data-$(DATA_KEY)
# Your own shards (make train DATA=...) are used as they are.
DATA_PREREQ := $(if $(filter $(BUILD)/shards,$(DATA)),$(DATA_STAMP),$(DATA)/manifest.json)

$(DATA_STAMP): | $(VENV)/.installed
	@if ls $(BUILD)/.demo-data-* >/dev/null 2>&1; then echo "demo data settings changed ($(DATA_KEY)): remaking build/synth and build/shards, and starting a new run in $(WORKDIR)"; fi
	rm -rf $(BUILD)/synth $(BUILD)/shards $(BUILD)/.demo-data-* $(if $(filter $(BUILD)/run,$(WORKDIR)),$(WORKDIR))
	$(XRAY) synth --out $(BUILD)/synth --num-patients $(PATIENTS) --seed $(SEED) --image-size $(SYNTH_SIZE) \
	  --difficulty $(DIFFICULTY)
	$(XRAY) shards --src $(BUILD)/synth --out $(BUILD)/shards --num-shards $(SHARDS) --image-size $(IMAGE_SIZE) --seed $(SEED) \
	  --val-fraction $(VAL_FRACTION)
	touch $@

$(DATA)/manifest.json:
	@echo "no shards at $(DATA): make them with xray shards --src IMAGES --out $(DATA)" >&2; exit 2

train: $(VENV)/.installed $(DATA_PREREQ) ## synth data -> shards -> train on $(WORKERS) local workers -> evaluate
	$(XRAY) train --data $(DATA) --workdir $(WORKDIR) --preset $(PRESET) --workers $(WORKERS)
	$(XRAY) evaluate --data $(DATA) --workdir $(WORKDIR)
	@echo "artifacts: $(WORKDIR)/ (best.weights.h5, history.csv, tensorboard/, eval/)"

tune: $(VENV)/.installed $(DATA_PREREQ) ## KerasTuner search ($(TRIALS) trials, $(PARALLEL) parallel workers), then train + evaluate the best
	$(XRAY) tune --data $(DATA) --workdir $(TUNE_DIR) --preset $(PRESET) --max-trials $(TRIALS) \
	  --epochs-per-trial $(TRIAL_EPOCHS) --objective $(OBJECTIVE) --parallel $(PARALLEL) --retrain --workers $(WORKERS)
	@echo "trials: $(TUNE_DIR)/trials.csv; best config: $(TUNE_DIR)/best_config.json; model: $(TUNE_DIR)/best/ (make export WORKDIR=$(TUNE_DIR)/best)"

export: $(VENV)/.installed ## export $(WORKDIR)'s best model to $(MODEL_BASE)/<version> (gated on test AUC)
	$(XRAY) export --workdir $(WORKDIR) --model-base $(MODEL_BASE)
	$(XRAY) export --model-base $(MODEL_BASE) --list

serve: $(VENV)/.installed ## run TF Serving in Docker over $(MODEL_BASE): gRPC :$(GRPC_PORT), REST :$(REST_PORT)
	@command -v docker >/dev/null 2>&1 || { echo "make serve runs TF Serving with Docker, which is not installed here."; \
	  echo "Install Docker Engine (https://docs.docker.com/engine/install/), or run tensorflow_model_server yourself with"; \
	  echo "  --model_config_file=$(MODEL_BASE)/models.config (base path /models/xray -> $(MODEL_BASE))."; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "Docker is installed but its engine is not reachable (is the daemon running? are you in the docker group?)"; exit 1; }
	@ls $(MODEL_BASE)/[0-9]* >/dev/null 2>&1 || { echo "no exported version under $(MODEL_BASE): run make export first"; exit 1; }
	$(XRAY) export --model-base $(MODEL_BASE) --serving-config $(SERVING_CONFIG) --serving-base-path /models/xray
	docker run --rm --name xray-serving $(DOCKER_RUN_ARGS) -p $(GRPC_PORT):$(GRPC_PORT) -p $(REST_PORT):$(REST_PORT) \
	  -v $(abspath $(MODEL_BASE)):/models/xray:ro -v $(abspath $(SERVING_CONFIG)):/config:ro \
	  --entrypoint tensorflow_model_server $(or $(SERVING_IMAGE),$(TFSERVING_IMAGE)) \
	  --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) --model_config_file=/models/xray/models.config \
	  --model_config_file_poll_wait_seconds=30 --enable_batching --batching_parameters_file=/config/batching.config \
	  --monitoring_config_file=/config/monitoring.config --allow_version_labels_for_unavailable_models=true $(SERVING_FLAGS)

predict: $(VENV)/.installed ## score the synthetic test images with the exported model in-process
	$(XRAY) predict $(BUILD)/synth/test --model $(MODEL_BASE) --format table

image: ## build the project image: make image IMAGE=registry/xray TAG=0.1.0 [VARIANT=gpu] [BASE=image] [PIP_CERT=ca.pem]
	@test -n "$(IMAGE)" || { echo "set IMAGE, e.g. make image IMAGE=registry.example.com/xray TAG=0.1.0"; exit 1; }
	@test -z "$(PIP_CERT)" || test -f "$(PIP_CERT)" || { echo "PIP_CERT=$(PIP_CERT) is not a file (a PEM CA bundle)"; exit 1; }
	$(if $(PIP_CERT),cp "$(PIP_CERT)" .pip-cert.pem;) status=0; docker build --build-arg VARIANT=$(VARIANT) \
	  $(if $(BASE),--build-arg BASE=$(BASE)) -t $(IMAGE):$(TAG) . || status=$$?; rm -f .pip-cert.pem; exit $$status

# make push records the digest the registry gave IMAGE:TAG in $(BUILD)/digests/; every cluster step then runs
# IMAGE@sha256:... (what was pushed, whatever the tag names later). Remove the file to run the tag again.
DIGESTS = $(BUILD)/digests
digest_file = $(DIGESTS)/$(subst /,_,$(subst :,_,$(1)))
push: ## push the project image and record its digest for the cluster steps: make push IMAGE=registry/xray TAG=0.1.0
	@test -n "$(IMAGE)" || { echo "set IMAGE, e.g. make push IMAGE=registry.example.com/xray TAG=0.1.0"; exit 1; }
	docker push $(IMAGE):$(TAG)
	@$(MAKE) --no-print-directory record-digest REF=$(IMAGE):$(TAG)

# The serving image pinned the same way: pulled once, its digest recorded; make deploy-serving then runs it.
pin-serving: ## pull the TF Serving image (SERVING_IMAGE, default the overlay's) and record its digest for deploy-serving
	docker pull $(or $(SERVING_IMAGE),$(OVERLAY_SERVING_IMAGE))
	@$(MAKE) --no-print-directory record-digest REF=$(or $(SERVING_IMAGE),$(OVERLAY_SERVING_IMAGE)) PIN_NAME=serving-$(OVERLAY)

PIN_FILE = $(call digest_file,$(or $(PIN_NAME),$(REF)))
record-digest:
	@mkdir -p $(DIGESTS)
	@name="$(REF)"; name="$${name%:*}"; \
	  digest=$$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$(REF)" | grep -m1 "^$$name@sha256:"); \
	  test -n "$$digest" || { echo "docker has no registry digest for $(REF) (docker inspect RepoDigests is empty: was it pushed?)" >&2; exit 1; }; \
	  echo "$$digest" > $(PIN_FILE).tmp && mv $(PIN_FILE).tmp $(PIN_FILE); \
	  echo "recorded $$digest in $(PIN_FILE): the cluster steps run this digest"

image-set:
	@test -n "$(IMAGE)" || { echo "set IMAGE to the project image you pushed (make image push IMAGE=registry.example.com/xray TAG=$(TAG)), e.g. make $(MAKECMDGOALS) IMAGE=registry.example.com/xray TAG=$(TAG)" >&2; exit 2; }

# Every cluster target is one `xray cluster STEP` (xray/cluster/steps.py): pre-flight and render into build/k8s/STEP,
# the step's previous Job replaced, kubectl apply -k, then followed like xray jobs watch until it ends.
STEP_ARGS = --overlay $(OVERLAY) --namespace $(NAMESPACE) --interval $(WATCH_INTERVAL) --stuck-after $(STUCK_AFTER) \
  $(if $(NODE_SELECTOR),--node-selector "$(NODE_SELECTOR)") $(if $(SERVICE_ACCOUNT),--service-account $(SERVICE_ACCOUNT)) \
  $(if $(IMAGE_PULL_SECRET),--image-pull-secret $(IMAGE_PULL_SECRET))
STEP_IMAGE = --image $(or $(shell cat $(call digest_file,$(IMAGE):$(CLUSTER_TAG)) 2>/dev/null),$(IMAGE):$(CLUSTER_TAG))
OVERLAY_SERVING_IMAGE = $(TFSERVING_IMAGE)$(if $(filter gpu,$(OVERLAY)),-gpu)
SERVING_PIN = $(shell cat $(call digest_file,serving-$(OVERLAY)) 2>/dev/null)

volume: $(VENV)/.installed ## the namespace and the shared volume claim (a step of its own; STORAGE_CLASS=name)
	$(XRAY) cluster storage $(STEP_ARGS) --storage-class "$(STORAGE_CLASS)" --out $(BUILD)/k8s/storage

data-cluster: image-set volume ## copy SRC (Kaggle-layout folder, .zip or .tar) onto the volume, then shard it there (a Job)
	@test -n "$(SRC)" || { echo "set SRC to a local image folder (Kaggle chest_xray layout), .zip or .tar, or a gs:// folder: make data-cluster SRC=~/chest_xray IMAGE=..." >&2; exit 2; }
	$(XRAY) cluster data $(STEP_ARGS) $(STEP_IMAGE) --upload "$(SRC)" --dest $(UPLOAD_DEST) --data $(CLUSTER_DATA) --out $(BUILD)/k8s

# weights-cluster: the ImageNet weights (the team preset's backbone) put on the volume once; pods load them from there.
WEIGHTS ?= $(HOME)/.keras/models/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5
weights-cluster: image-set volume ## copy the ImageNet weights file (WEIGHTS=, default Keras' cache) onto the volume: no pod downloads it
	$(XRAY) cluster weights $(STEP_ARGS) $(STEP_IMAGE) --file "$(WEIGHTS)" --out $(BUILD)/k8s/weights

train-cluster: image-set volume ## pre-flight, apply the Indexed Job (WORKERS, OVERLAY, IMAGE, TAG, CONFIG, OVERRIDES), follow it
	$(XRAY) cluster train $(STEP_ARGS) $(STEP_IMAGE) --workers $(WORKERS) --data $(CLUSTER_DATA) --workdir $(CLUSTER_WORKDIR) --config "$(CONFIG)" \
	  --deadline $(DEADLINE) $(if $(QUEUE),--queue $(QUEUE)) --out $(BUILD)/k8s/train $(OVERRIDES)

tune-cluster: image-set volume ## pre-flight, apply the tuner chief + PARALLEL workers (CONFIG, OVERRIDES, TRIALS), follow the workers
	$(XRAY) cluster tune $(STEP_ARGS) $(STEP_IMAGE) --workers $(PARALLEL) --data $(CLUSTER_DATA) --workdir $(CLUSTER_TUNE_DIR) --config "$(CONFIG)" \
	  --deadline $(DEADLINE) $(if $(QUEUE),--queue $(QUEUE)) --out $(BUILD)/k8s/tune \
	  $(if $(filter command line,$(origin TRIALS)),--max-trials $(TRIALS)) $(OVERRIDES)
	@echo "best config on the volume: $(CLUSTER_TUNE_DIR)/best_config.json; train it with:"
	@echo "  make train-cluster CONFIG=$(CLUSTER_TUNE_DIR)/best_config.json IMAGE=$(IMAGE) TAG=$(TAG) OVERLAY=$(OVERLAY)"

export-cluster: image-set volume ## evaluate CLUSTER_WORKDIR's run and export it (gated) to models/ on the volume (a Job)
	$(XRAY) cluster export $(STEP_ARGS) $(STEP_IMAGE) --data $(CLUSTER_DATA) --workdir $(CLUSTER_WORKDIR) --out $(BUILD)/k8s/export \
	  $(if $(CLUSTER_MODEL_BASE),--model-base $(CLUSTER_MODEL_BASE))

deploy-serving: volume ## apply TF Serving (Deployment, Services, HPA, PDB) from xray/k8s/overlays/$(OVERLAY)/serving
	$(XRAY) cluster serving $(STEP_ARGS) --out $(BUILD)/k8s/serving $(if $(or $(SERVING_IMAGE),$(SERVING_PIN)),--image $(or $(SERVING_IMAGE),$(SERVING_PIN))) $(if $(REPLICAS),--replicas $(REPLICAS)) \
	  $(if $(CLUSTER_MODEL_BASE),--model-base $(CLUSTER_MODEL_BASE))

promote: image-set ## move a version label on the running TF Serving replicas (a Job): make promote LABEL=stable VERSION=2 | FROM=canary | ROLLBACK=1
	$(XRAY) cluster promote $(STEP_ARGS) $(STEP_IMAGE) --out $(BUILD)/k8s/promote --label "$(LABEL)" $(if $(VERSION),--version $(VERSION)) \
	  $(if $(FROM),--from-label $(FROM)) $(if $(filter 1 yes true,$(ROLLBACK)),--rollback) $(if $(WAIT),--wait $(WAIT)) \
	  $(if $(CLUSTER_MODEL_BASE),--model-base $(CLUSTER_MODEL_BASE))

promote-local: $(VENV)/.installed ## the same on make serve's server: make promote-local LABEL=stable VERSION=2 | FROM=canary | ROLLBACK=1
	$(XRAY) promote --model-base $(MODEL_BASE) --grpc localhost:$(GRPC_PORT) --label "$(LABEL)" $(if $(VERSION),--version $(VERSION)) \
	  $(if $(FROM),--from-label $(FROM)) $(if $(filter 1 yes true,$(ROLLBACK)),--rollback) $(if $(WAIT),--wait $(WAIT))

tensorboard: image-set volume ## TensorBoard over the runs on the volume; then: kubectl -n NAMESPACE port-forward svc/xray-tensorboard 6006
	$(XRAY) cluster tensorboard $(STEP_ARGS) $(STEP_IMAGE) --out $(BUILD)/k8s/tensorboard
	@echo "open it: kubectl -n $(NAMESPACE) port-forward svc/xray-tensorboard 6006:6006, then http://localhost:6006"

status: $(VENV)/.installed ## worker table, latest epoch and warnings of JOB (default xray-train)
	$(XRAY) jobs status $(JOB) -n $(NAMESPACE)

logs: $(VENV)/.installed ## follow the chief's log of JOB
	$(XRAY) jobs logs $(JOB) -n $(NAMESPACE) --follow

delete: $(VENV)/.installed ## delete JOB and its pods (the workdir on the volume stays)
	$(XRAY) jobs delete $(JOB) -n $(NAMESPACE)

bench: $(VENV)/.installed ## P1-P9 side-by-side benchmarks -> bench/results.json (ONLY=P7,P9 for some)
	$(BIN)/python -m bench.run --out bench/results.json $(if $(ONLY),--only $(ONLY))

test: $(VENV)/.installed ## run the test suite (real TensorFlow, multi-process training, a local Kubernetes control plane)
	@# Built before pytest so that a cold build (minutes, once per machine) is not counted in a test's timeout:
	@# the cluster's binaries, the project image's archive, Kueue's manager (all cached in ~/.cache/xray).
	bash xray/localcluster/build.sh >/dev/null
	$(BIN)/python -m xray.localcluster image-archive >/dev/null
	$(BIN)/python -m xray.localcluster kueue build >/dev/null
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# make mutate MODULES="xray.data.split xray.trainer.config": those modules only (default: all of [tool.mutmut] only_mutate).
MODULES ?=
mutate: $(VENV)/.installed ## mutation testing (mutmut) of the modules with fast tests; the score per module, >= 85% each
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-mutate.lock
	rm -rf mutants
	$(BIN)/mutmut run --max-children $$(nproc) $(foreach m,$(MODULES),"$(m).*")
	$(BIN)/python tests/mutation_report.py --recheck $(MODULES)

cluster-build: ## build the local cluster (Kubernetes v1.34 control plane, kubelet, kube-proxy, etcd, CoreDNS, KWOK; cached in ~/.cache/xray)
	bash xray/localcluster/build.sh

cluster-up: $(VENV)/.installed ## start a local cluster: control plane, a real node, 2 KWOK nodes (NODE=0: KWOK only); writes $(BUILD)/cluster/kubeconfig
	XRAY_CLUSTER_ROOT=$(CLUSTER_ROOT) $(BIN)/python -m xray.localcluster up $(if $(filter 0,$(NODE)),--no-node)

image-load: $(VENV)/.installed ## build the project image from the Dockerfile (cached) and load it into the local node as IMAGE:TAG
	@test -n "$(IMAGE)" || { echo "set IMAGE, e.g. make image-load IMAGE=xray.local/xray TAG=dev" >&2; exit 2; }
	XRAY_CLUSTER_ROOT=$(CLUSTER_ROOT) $(BIN)/python -m xray.localcluster image $(IMAGE):$(TAG)

# Test infrastructure, for trying the serving steps on the local cluster: the real tensorflow/serving cannot be
# pulled here, so this builds the TF Serving stand-in (tests/tfserving_stub/) as an image FROM the project image.
STANDIN_IMAGE ?= xray.local/tfserving-standin:test
standin-load: $(VENV)/.installed ## TEST INFRASTRUCTURE: the TF Serving stand-in as $(STANDIN_IMAGE) on the local node (make deploy-serving SERVING_IMAGE=...)
	rm -rf $(BUILD)/standin-context && mkdir -p $(BUILD)/standin-context
	cp tests/tfserving_standin/* $(BUILD)/standin-context/
	cp -r tests/tfserving_stub $(BUILD)/standin-context/ && rm -rf $(BUILD)/standin-context/tfserving_stub/__pycache__
	XRAY_CLUSTER_ROOT=$(CLUSTER_ROOT) $(BIN)/python -m xray.localcluster derived $(STANDIN_IMAGE) $(BUILD)/standin-context

cluster-kueue-up: $(VENV)/.installed ## install Kueue (built from its Go module, cached) on the local cluster, for QUEUE=
	XRAY_CLUSTER_ROOT=$(CLUSTER_ROOT) $(BIN)/python -m xray.localcluster kueue up

cluster-kueue-down: $(VENV)/.installed ## take Kueue out of the local cluster again
	XRAY_CLUSTER_ROOT=$(CLUSTER_ROOT) $(BIN)/python -m xray.localcluster kueue down

cluster-down: ## stop the local cluster started by cluster-up, take back what its node changed on the host, remove its data (logs stay)
	XRAY_CLUSTER_ROOT=$(CLUSTER_ROOT) $(PYTHON) -m xray.localcluster down

clean: cluster-down ## remove build outputs (keeps .venv; stops the local control plane first)
	rm -rf $(BUILD)
