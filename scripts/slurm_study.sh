#!/usr/bin/env bash
# Run a search study on a SLURM allocation: a Ray head on the first node, Ray workers on the others, and the
# study driver on the head. The run folder (runs/NAME) must be on a file system every node sees (trials write
# their checkpoints and metrics there); for many nodes use PostgreSQL for Optuna (--storage postgresql://...).
#
#   sbatch --nodes=2 --gpus-per-node=4 --cpus-per-task=32 scripts/slurm_study.sh search_spaces/cifar10.yaml cifar10-a
#   sbatch scripts/slurm_study.sh search_spaces/cifar10.yaml --trials 200      # NAME defaults to the space's name
#
# Not run on a real SLURM cluster by this project's CI (none is available); `bash -n` checks its syntax.
#SBATCH --job-name=kdstudy
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --gpus-per-node=4
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

SPACE=${1:?usage: sbatch scripts/slurm_study.sh SPACE.yaml [NAME] [extra args for python -m study run]}
shift
NAME=$(basename "$SPACE" .yaml)
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # a second argument that is not an option is the run name
  NAME=$1
  shift
fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=0
CPUS=${SLURM_CPUS_PER_TASK:-$(nproc)}

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
# The first IPv4 address that is not loopback (`hostname --ip-address` gives 127.0.1.1 on stock Debian/Ubuntu).
head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w "$head" hostname -I | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.' || true)
if [ -z "$head_ip" ]; then
  echo "error: could not find an IPv4 address of $head for the Ray head; set it by hand in $0." >&2
  exit 2
fi
port=$(( 20000 + ${SLURM_JOB_ID:-0} % 10000 * 2 ))  # per job: the GCS, and +1 for each node's agent
echo "Ray head: $head ($head_ip:$port); workers: ${nodes[*]:1}"

# `ray start --head` turns token authentication on when ~/.ray/auth_token exists; `ray status` below (and the
# driver, which does this itself) must then send the token.
if [ -z "${RAY_AUTH_MODE:-}" ] && [ -f "$HOME/.ray/auth_token" ]; then
  export RAY_AUTH_MODE=token
fi

# Each node counts its own GPUs: SLURM_GPUS_ON_NODE (set for --gpus-per-node=type:N and --gres=gpu:N alike),
# else nvidia-smi, else 0.
start_ray() {  # NODE, then `ray start` arguments (no spaces inside one argument)
  local node=$1
  shift
  srun --nodes=1 --ntasks=1 --cpus-per-task="$CPUS" --overlap -w "$node" bash -c '
    gpus=${SLURM_GPUS_ON_NODE:-}
    if [ -z "$gpus" ]; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true); fi
    py=$1; cpus=$2; shift 2
    exec "$py" -m ray.scripts.scripts start --num-cpus="$cpus" --num-gpus="${gpus:-0}" --block "$@"
  ' start_ray "$PY" "$CPUS" "$@" &
}
start_ray "$head" --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false \
  --dashboard-agent-listen-port=$((port + 1))
head_pid=$!
for node in "${nodes[@]:1}"; do
  start_ray "$node" --address="$head_ip:$port" --dashboard-agent-listen-port=$((port + 1))
done

# Wait until every node has joined (at most 5 minutes), instead of guessing with sleeps.
for _ in $(seq 150); do
  if ! kill -0 "$head_pid" 2>/dev/null; then
    echo "error: the Ray head on $head exited (see its error above in slurm-${SLURM_JOB_ID:-}.out)." >&2
    exit 2
  fi
  up=$("$PY" -m ray.scripts.scripts status --address "$head_ip:$port" 2>/dev/null | grep -c " node_" || true)
  [ "${up:-0}" -ge "${#nodes[@]}" ] && break
  sleep 2
done
if [ "${up:-0}" -lt "${#nodes[@]}" ]; then
  echo "error: only ${up:-0} of ${#nodes[@]} Ray nodes joined $head_ip:$port within 5 minutes; see slurm-${SLURM_JOB_ID:-}.out." >&2
  exit 2
fi

# Re-submitting the same command resumes the study (finished trials are kept).
"$PY" -m study run "$SPACE" --name "$NAME" --address "$head_ip:$port" "$@"
