#!/usr/bin/env bash
# Run a search study on a SLURM allocation: a Ray head on the first node, Ray workers on the others, and the
# study driver on the head. The run folder (runs/NAME) must be on a file system every node sees (trials write
# their checkpoints and metrics there); for many nodes use PostgreSQL for Optuna (--storage postgresql://...).
#
#   sbatch --nodes=2 --gpus-per-node=4 --cpus-per-task=32 scripts/slurm_study.sh search_spaces/cifar10.yaml cifar10-a
#
#SBATCH --job-name=kdstudy
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --gpus-per-node=4
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

SPACE=${1:?usage: sbatch scripts/slurm_study.sh SPACE.yaml [NAME] [extra args for python -m study run]}
NAME=${2:-$(basename "$SPACE" .yaml)}
shift $(( $# >= 2 ? 2 : 1 ))
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=0

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379
echo "Ray head: $head ($head_ip:$port); workers: ${nodes[*]:1}"

srun --nodes=1 --ntasks=1 -w "$head" \
  "$PY" -m ray.scripts.scripts start --head --node-ip-address="$head_ip" --port=$port \
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_PER_NODE:-0}" --include-dashboard=false --block &
sleep 15
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" \
    "$PY" -m ray.scripts.scripts start --address="$head_ip:$port" \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_PER_NODE:-0}" --block &
  sleep 2
done
sleep 10

# Re-submitting the same command resumes the study (finished trials are kept).
"$PY" -m study run "$SPACE" --name "$NAME" --address "$head_ip:$port" "$@"
