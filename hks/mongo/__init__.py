"""The search over MongoDB: pymongo 4 for hyperopt (mongo_compat), addresses
and flags (mongo_settings), the driver's queue (mongo_search), results and
kept models through GridFS (mongo_files), the live view (mongo_view), the
curves a worker's trial reads (mongo_curves). Never imports Keras or the model."""
