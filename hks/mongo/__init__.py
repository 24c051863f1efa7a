"""The search over MongoDB: pymongo 4 for hyperopt (mongo_compat), addresses
and flags (mongo_settings), the driver's queue (mongo_search), the curves a
worker's trial reads (mongo_curves). Never imports Keras or the model."""
