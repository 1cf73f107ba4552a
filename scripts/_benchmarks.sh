# The 10 image benchmarks as functions over scripts/_common.sh; each scripts/v1_*/eval/<bench>.sh calls one.
# Protocol (the paper's, as LLaVA's eval scripts): greedy decoding, vicuna_v1 template, batch 1,
# LLaVA's question files; paths as in docs/eval.md.
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# data_path FOLDER: a benchmark's data folder under EVAL_DIR
data_path() { echo "$EVAL_DIR/$1"; }

# infer BENCH MODULE ARGS...: sharded inference into answers/<ckpt>/<method>/n_<tokens>/merge.jsonl
infer() {
    local bench=$1 module=$2
    shift 2
    run_sharded "$(answers_dir "$bench")" "$module" "$@" \
        --temperature 0 --conv-mode vicuna_v1 --visual-token-num "$TOKENS"
}

merged() { echo "$(answers_dir "$1")/merge.jsonl"; }

bench_vqav2() {
    infer vqav2 llava.eval.model_vqa_loader \
        --question-file "$(data_path vqav2)/llava_vqav2_mscoco_test-dev2015.jsonl" --image-folder "$(data_path vqav2)/test2015"
    score llava.eval.convert_vqav2_for_submission --test-file "$(data_path vqav2)/llava_vqav2_mscoco_test2015.jsonl" \
        --src "$(merged vqav2)" --dst "$(data_path vqav2)/answers_upload/$CKPT/$METHOD/$PARAM.json"
    echo "Submit $(data_path vqav2)/answers_upload/$CKPT/$METHOD/$PARAM.json to EvalAI challenge 830 (test-dev phase)."
}

bench_gqa() {
    infer gqa llava.eval.model_vqa_loader \
        --question-file "$(data_path gqa)/llava_gqa_testdev_balanced.jsonl" --image-folder "$(data_path gqa)/data/images"
    score llava.eval.eval_gqa --result-file "$(merged gqa)" \
        --questions "$(data_path gqa)/data/testdev_balanced_questions.json" \
        --predictions-out "$(data_path gqa)/data/$CKPT/$METHOD/$PARAM/testdev_balanced_predictions.json" \
        --score-file "$(score_file gqa)"
}

bench_vizwiz() {
    infer vizwiz llava.eval.model_vqa_loader \
        --question-file "$(data_path vizwiz)/llava_test.jsonl" --image-folder "$(data_path vizwiz)/test"
    score llava.eval.convert_vizwiz_for_submission --annotation-file "$(data_path vizwiz)/llava_test.jsonl" \
        --result-file "$(merged vizwiz)" --result-upload-file "$(data_path vizwiz)/answers_upload/$CKPT/$METHOD/$PARAM.json"
    echo "Submit $(data_path vizwiz)/answers_upload/$CKPT/$METHOD/$PARAM.json to EvalAI challenge 2185."
}

bench_sqa() {
    infer sqa llava.eval.model_vqa_science --single-pred-prompt \
        --question-file "$(data_path sqa)/llava_test_CQM-A.json" --image-folder "$(data_path sqa)/images/test"
    score llava.eval.eval_science_qa --base-dir "$(data_path sqa)" --question-file "$(data_path sqa)/llava_test_CQM-A.json" \
        --result-file "$(merged sqa)" --output-file "$(answers_dir sqa)/output.jsonl" \
        --output-result "$(answers_dir sqa)/result.json" --score-file "$(score_file sqa)"
}

bench_textvqa() {
    infer textvqa llava.eval.model_vqa_loader \
        --question-file "$(data_path textvqa)/llava_textvqa_val_v051_ocr.jsonl" --image-folder "$(data_path textvqa)/train_images"
    score llava.eval.eval_textvqa --annotation-file "$(data_path textvqa)/TextVQA_0.5.1_val.json" \
        --question-file "$(data_path textvqa)/llava_textvqa_val_v051_ocr.jsonl" \
        --result-file "$(merged textvqa)" --score-file "$(score_file textvqa)"
}

bench_pope() {
    infer pope llava.eval.model_vqa_loader \
        --question-file "$(data_path pope)/llava_pope_test.jsonl" --image-folder "$(data_path pope)/val2014"
    score llava.eval.eval_pope --annotation-dir "$(data_path pope)/coco" --question-file "$(data_path pope)/llava_pope_test.jsonl" \
        --result-file "$(merged pope)" --score-file "$(score_file pope)"
}

bench_mme() {
    infer MME llava.eval.model_vqa_loader \
        --question-file "$(data_path MME)/llava_mme.jsonl" --image-folder "$(data_path MME)/MME_Benchmark_release_version"
    score llava.eval.eval_mme --question-file "$(data_path MME)/llava_mme.jsonl" --result-file "$(merged MME)" \
        --gt-dir "$(data_path MME)/MME_Benchmark_release_version" --output-dir "$(data_path MME)/eval_tool/answers/$CKPT/$METHOD/$PARAM" \
        --score-file "$(score_file MME)"
}

# _mmbench FOLDER TSV LANG BENCHMARK_KEY: MMBench or MMBench-CN
_mmbench() {
    local folder=$1 tsv=$2 lang=$3 key=$4
    infer "$folder" llava.eval.model_vqa_mmbench --single-pred-prompt --lang "$lang" --question-file "$(data_path "$folder")/$tsv"
    local upload="$(data_path "$folder")/answers_upload/$CKPT/$METHOD/$PARAM.xlsx"
    score llava.eval.convert_mmbench_for_submission --annotation-file "$(data_path "$folder")/$tsv" \
        --result-file "$(merged "$folder")" --upload-file "$upload"
    score llava.eval.eval_mmbench --upload-file "$upload" --benchmark "$key" --score-file "$(score_file "$folder")"
    echo "Local circular dev score above; submit $upload to the OpenCompass MMBench server for the official one."
}

bench_mmbench() { _mmbench mmbench mmbench_dev_20230712.tsv en mmb; }
bench_mmbench_cn() { _mmbench mmbench_cn mmbench_dev_cn_20231003.tsv cn mmb_cn; }

bench_mmvet() {
    infer mm-vet llava.eval.model_vqa \
        --question-file "$(data_path mm-vet)/llava-mm-vet.jsonl" --image-folder "$(data_path mm-vet)/images"
    score llava.eval.convert_mmvet_for_eval --src "$(merged mm-vet)" --question-file "$(data_path mm-vet)/llava-mm-vet.jsonl" \
        --dst "$(data_path mm-vet)/results/$CKPT/$METHOD/$PARAM.json"
    echo "Grade $(data_path mm-vet)/results/$CKPT/$METHOD/$PARAM.json with the official MM-Vet evaluator," \
         "or with: python -m llava.eval.eval_mmvet --help"
}
