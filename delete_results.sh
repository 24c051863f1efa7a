#!/usr/bin/env bash
# Delete everything a search wrote: result files, results.pkl, model plots,
# TensorBoard logs, weights, kept models (results/models), and what analyze_results.py and
# conv_filters_visualization.py drew from them. Asks first; -y skips the question.
set -euo pipefail
cd "$(dirname "$0")"

targets=(results/*.txt.json results/results.csv results/*.png results/models results.pkl model_demo.png
         model_best.png TensorBoard weights layers)
existing=()
for target in "${targets[@]}"; do
    [ -e "$target" ] && existing+=("$target")
done
if [ ${#existing[@]} -eq 0 ]; then
    echo "Nothing to delete."
    exit 0
fi

if [ "${1:-}" != "-y" ]; then
    echo "This deletes ${#existing[@]} item(s): $(printf '%s ' "${existing[@]}" | cut -c1-300)"
    read -r -p "Delete them? [y/N] " answer
    case "$answer" in
        y|Y|yes|YES) ;;
        *) echo "Nothing deleted."; exit 1 ;;
    esac
fi
rm -rf -- "${existing[@]}"
echo "Deleted results, results.pkl, kept models, plots and TensorBoard logs."
