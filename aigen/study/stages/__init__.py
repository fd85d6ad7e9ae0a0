"""The stages of `aigen study`, each a function with explicit inputs and outputs, chained by
aigen.study.driver:

    data.load_data -> data.explore -> data.make_splits
    -> for each input protocol: train.train_protocol -> score.lr_study (first protocol)
       -> score.degradation_sweep -> score.diagnose (first protocol) -> score.evaluate_sets
    -> results.write_results (results.json, CSVs, figures, report.md, config.json)

What every stage shares (arguments, seeds, hyperparameters, protocols, the work folder, the
process under torchrun, the device) is a context.StudyContext. Each stage's output is persisted in
the work folder as soon as it is done (trained models and their predictions per (model, seed),
the other stages' records under resume/stages/), so `aigen study --resume OUT` skips every stage
an interrupted attempt finished.
"""
