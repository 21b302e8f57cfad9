"""Every file name of a run directory, relative to the run's URL (a local path or gs:// prefix), in one place.

No imports: modules that must answer before TensorFlow starts (status, compare, the preflight checks) use these names
as much as the trainer does. Messages and templates may name the files in prose; code takes the constants from here.

    config.yaml                  the run's effective config, written at the first start, checked at every resume
    classes.json                 the class names, in label order (predict and serve need no dataset)
    data_manifest.json           data.name=folder: every image's split (or why it was skipped), the decoded cache
    decoded/                     data.name=folder: the decoded images, when data.cache_dir is not set
    history.json                 per-epoch metrics and the record of every process start
    status.json                  where the run is now (`python -m job status`)
    checkpoints/                 TF checkpoint files, their commit objects, TF's state file (job/checkpoint.py)
    logs/{train,validation,eval} TensorBoard event files
    logs/events.out.tfevents.tune  a tune trial's values and objective, for TensorBoard's HParams (job/tune/hparams.py)
    logs/trainer/                the trainer's own log, one file per process start
    eval/metrics.json            the final evaluation; eval/report.txt its text form; eval/report.html the report
    export/                      model.keras, model.h5, saved_model/, tfserving/<name>/1/ (TF Serving's layout),
                                 model.tflite, model_int8.tflite (LiteRT), classes.json, model_card.json
"""

CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"  # in the run, and in export/ beside the exported model
DATA_MANIFEST_FILE = "data_manifest.json"  # data.name=folder only (job/data/folder.py)
DECODED_DIR = "decoded"  # data.name=folder: the default data.cache_dir (job/data/decoded.py)
HISTORY_FILE = "history.json"
STATUS_FILE = "status.json"

CKPT_DIR = "checkpoints"
CKPT_STATE_FILE = f"{CKPT_DIR}/checkpoint"  # TF's own state file: what tf.train.latest_checkpoint reads

LOGS_DIR = "logs"
TRAIN_LOGS = f"{LOGS_DIR}/train"
VALIDATION_LOGS = f"{LOGS_DIR}/validation"
EVAL_LOGS = f"{LOGS_DIR}/eval"
TRAINER_LOG_DIR = f"{LOGS_DIR}/trainer"
TUNE_TRIAL_EVENTS = f"{LOGS_DIR}/events.out.tfevents.tune"  # TensorBoard reads any file named *tfevents*

EVAL_DIR = "eval"
METRICS_FILE = f"{EVAL_DIR}/metrics.json"
REPORT_TEXT_FILE = f"{EVAL_DIR}/report.txt"
REPORT_FILE = f"{EVAL_DIR}/report.html"

EXPORT_DIR = "export"
KERAS_FILE = f"{EXPORT_DIR}/model.keras"
H5_FILE = f"{EXPORT_DIR}/model.h5"
SAVED_MODEL_DIR = f"{EXPORT_DIR}/saved_model"
TFSERVING_DIR = f"{EXPORT_DIR}/tfserving"  # <model name>/<version>/: what TF Serving's --model_base_path points at
LITERT_FILE = f"{EXPORT_DIR}/model.tflite"
LITERT_INT8_FILE = f"{EXPORT_DIR}/model_int8.tflite"
MODEL_CARD_FILE = "model_card.json"  # in export/
CARD_MARKDOWN = f"{EXPORT_DIR}/MODEL_CARD.md"  # the model card for people
