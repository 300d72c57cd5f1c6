"""An independent linear classifier for the probe tests: scikit-learn's multinomial logistic
regression (L-BFGS, C=1) on standardised features.

  .venv/bin/python scripts/reference/logreg.py DIR   # DIR: train_x.npy, train_y.npy, test_x.npy, test_y.npy
Prints {"accuracy": ...}.
"""
import json, os, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

d = sys.argv[1]
load = lambda name: np.load(os.path.join(d, name))
scaler = StandardScaler().fit(load("train_x.npy"))
model = LogisticRegression(max_iter=5000).fit(scaler.transform(load("train_x.npy")), load("train_y.npy"))
print(json.dumps({"accuracy": float(model.score(scaler.transform(load("test_x.npy")), load("test_y.npy")))}))
