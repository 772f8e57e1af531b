"""Speech data engine: synthesis (eSpeak NG in process, Flite), augmentation, lexicon, manifests."""
