"""Run `hyperopt_optimize.main()` over a search space of tiny models.

The CLI tests start this in a subprocess instead of hyperopt_optimize.py so
that each trial trains in seconds on a 2-core CPU: everything but the size of
the space (flags, data loading, trials file, result files, resume) is the real
code path. Keys and branches are the real space's.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hyperopt import hp  # noqa: E402

import hyperopt_optimize  # noqa: E402

TINY_SPACE = dict(
    hyperopt_optimize.space,
    batch_size=hp.quniform("batch_size", 32, 64, 8),
    first_conv=hp.choice("first_conv", [None, hp.choice("first_conv_size", [3, 4])]),
    residual=hp.choice("residual", [None, 1.0]),
    conv_hiddn_units_mult=hp.uniform("conv_hiddn_units_mult", 0.1, 0.2),
    nb_conv_pool_layers=hp.choice("nb_conv_pool_layers", [2]),
    pooling_type=hp.choice("pooling_type", ["max", "avg"]),
    fc_units_1_mult=hp.uniform("fc_units_1_mult", 0.02, 0.04),
    one_more_fc=hp.choice("one_more_fc", [None, hp.uniform("fc_units_2_mult", 0.02, 0.04)]),
)

if __name__ == "__main__":
    hyperopt_optimize.space = TINY_SPACE
    sys.exit(hyperopt_optimize.main())
