"""The shipped example model modules, one per kind of model (see the README, "Bring your own model").

Each is a plain module following the model module contract and imports nothing of ``tfmlops``:

- ``mnist_mlp``   — the seed's MLP on 784 MNIST pixels (the default of every form);
- ``digits_cnn``  — a small CNN on 8x8x1 images (scikit-learn's digits), with its own ``load_data``;
- ``churn``       — binary churn classifier on a table with numeric and string columns (Parquet);
- ``diabetes``    — regression of disease progression (scikit-learn's diabetes data, TFRecord files);
- ``reviews``     — text classifier on raw strings (TextVectorization in the model, ``tf.data`` loader).

Their data is made by ``scripts/make_example_data.py`` and shipped under ``data/examples/``.
"""
