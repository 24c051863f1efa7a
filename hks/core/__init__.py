"""The ground floor every other part reads: the settings (flags), the result
files and atomic writes (storage), what the scripts print (console).
Imports nothing else of the project, and no Keras."""
