"""tuner.train: the engine. run.py (the run: folder, data, model, Trainer, final save), model.py
(loads the base and executes the RunPlan), data.py (rows and collators), args.py, trainer.py,
callbacks.py, the packing probe and the background job the app uses. The only importer of tuner.fast."""
