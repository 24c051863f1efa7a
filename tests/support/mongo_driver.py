"""Run the MongoDB driver (`hyperopt_optimize.main()`) with a stand-in
objective: `python tests/support/mongo_driver.py OBJECTIVE [driver flags]`,
where OBJECTIVE is `train` (the real training, over tiny_search's small space)
or one of mongo_objectives.py. Everything else is the real driver."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import hyperopt_optimize  # noqa: E402
import mongo_objectives  # noqa: E402
import tiny_search  # noqa: E402

if __name__ == "__main__":
    name = sys.argv.pop(1)
    hyperopt_optimize.space = tiny_search.TINY_SPACE
    if name != "train":
        hyperopt_optimize.optimize_cnn = getattr(mongo_objectives, name)
    sys.exit(hyperopt_optimize.main())
