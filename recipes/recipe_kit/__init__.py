"""The Accelerate recipes' shared kit, one module per concern:

- :mod:`~recipe_kit.flags` — the shared command line (``add_training_args``, ``add_arma_args``,
  ``validate_training_args``, ``seeds_from_args``, ``run_config``);
- :mod:`~recipe_kit.errors` — ``RecipeError``: a user mistake, printed as one line with exit
  status 2 by ``run_script`` (the recipes' ``__main__`` entry);
- :mod:`~recipe_kit.run_dir` — one run per ``--output-dir`` (``claim_output_dir`` locks and
  prepares it for the run);
- :mod:`~recipe_kit.checkpoints` — ``checkpoints/epoch_XXXX``, ``best``, ``final``, resume;
- :mod:`~recipe_kit.loop` — the Accelerator, seeding, the lr schedule and ``fit``;
- :mod:`~recipe_kit.skeleton` — ``recipe_accelerator`` + ``train_and_test``: the body of every
  recipe's ``training_function``;
- :mod:`~recipe_kit.data` — seeded splits, datasets from the Hub or disk, one decode pass;
- :mod:`~recipe_kit.results` — the seed table and the published checkpoint.
"""
from .checkpoints import (BEST_DIRNAME, CHECKPOINTS_DIRNAME, FINAL_DIRNAME, TRAINER_STATE_NAME, WEIGHTS_NAME,
                          TrainerState, checkpoint_dirs, checkpoint_problem, load_best_weights, resolve_resume)
from .data import (IMAGE_DECODE_ERRORS, check_decodable, load_hf_dataset, open_image, seeded_split,
                   undecodable)
from .errors import RecipeError, run_script, user_input
from .flags import (NOT_RUN_CONFIG, add_arma_args, add_training_args, run_config, seeds_from_args,
                    tracker_config, validate_training_args)
from .loop import LR_DECAYS, fit, make_accelerator, make_lr_scheduler, seed_everything
from .results import (count_parameters, format_mean_std, hub_repo_for_seed, publish, seed_caption, summarize,
                      write_seed_table)
from .run_dir import LOCK_NAME, RUN_CONFIG_NAME, claim_output_dir, prepare_output_dir
from .skeleton import TrainedRun, recipe_accelerator, train_and_test
