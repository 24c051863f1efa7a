"""The plain Keras reference that benchmark.py times the project against:
the project's architecture for a hyperspace written the way one would
without this project (float32 input in [0, 1], one-hot labels, default
compile settings), and the original design's per-image map_fn flip. If
neural_net.build_model changes the architecture, this must follow (the
benchmark checks that both have the same number of weights)."""


def reference_model(hs, flip="layer"):
    """The project's architecture for hyperspace `hs` written with plain Keras,
    as one would without this project: float32 input in [0, 1], one-hot labels,
    default compile settings. `flip="map_fn"` flips images one at a time in a
    loop, like the original."""
    import keras
    from keras import layers
    l2 = keras.regularizers.L2(0.0007 * hs["l2_weight_reg_mult"])
    act = hs["activation"]

    def conv(x, filters, kernel, strides=1, activation=act):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same",
                             activation=activation, kernel_regularizer=l2)(x)

    def strided(x, filters):
        x = conv(x, filters, 3, strides=2, activation="linear")
        return layers.BatchNormalization()(x) if hs["use_BN"] else x

    def pool(x, filters):
        kind = hs["pooling_type"]
        if kind == "max":
            return layers.MaxPooling2D(2)(x)
        if kind == "avg":
            return layers.AveragePooling2D(2)(x)
        if kind == "all_conv":
            return strided(x, filters)
        narrow, wide = int(filters * 0.33 + 1), int(filters * 0.4 + 1)
        a = strided(x, wide)
        b = strided(conv(conv(x, narrow, 1), wide, 3), wide)
        c = layers.MaxPooling2D(3, strides=2, padding="same")(conv(x, wide, 1))
        return layers.Concatenate()([a, b, c])

    inputs = keras.Input((32, 32, 3))
    x = layers.RandomFlip("horizontal")(inputs) if flip == "layer" else map_fn_flip()(inputs)
    if hs["first_conv"] is not None:
        x = conv(x, 16, int(hs["first_conv"]))
    filters = int(40 * hs["conv_hiddn_units_mult"])
    for i in range(int(hs["nb_conv_pool_layers"])):
        x = conv(x, filters, int(round(hs["conv_kernel_size"])))
        if hs["use_BN"]:
            x = layers.BatchNormalization()(x)
        if hs["residual"] is not None and i >= int(round(hs["conv_pool_res_start_idx"])):
            for _ in range(int(round(hs["residual"]))):
                shortcut = conv(x, filters, 1, activation="linear")
                branch = layers.Dropout(hs["conv_dropout_drop_proba"])(x)
                branch = conv(branch, filters, int(round(hs["res_conv_kernel_size"])))
                x = layers.BatchNormalization()(layers.Add()([shortcut, branch]))
        x = layers.Dropout(hs["conv_dropout_drop_proba"])(pool(x, filters))
        filters *= 2
    x = layers.Flatten()(x)
    x = layers.Dense(int(1000 * hs["fc_units_1_mult"]), activation=act, kernel_regularizer=l2)(x)
    x = layers.Dropout(hs["fc_dropout_drop_proba"])(x)
    if hs["one_more_fc"] is not None:
        x = layers.Dense(int(750 * hs["one_more_fc"]), activation=act, kernel_regularizer=l2)(x)
        x = layers.Dropout(hs["fc_dropout_drop_proba"])(x)
    fine = layers.Dense(100, activation="softmax", name="fine", kernel_regularizer=l2)(x)
    coarse = layers.Dense(20, activation="softmax", name="coarse", kernel_regularizer=l2)(x)
    model = keras.Model(inputs, [fine, coarse])
    optimizer = {"Adam": keras.optimizers.Adam, "Nadam": keras.optimizers.Nadam,
                 "RMSprop": keras.optimizers.RMSprop}[hs["optimizer"]]
    model.compile(optimizer=optimizer(learning_rate=0.001 * hs["lr_rate_mult"]),
                  loss=["categorical_crossentropy", "categorical_crossentropy"],
                  loss_weights=[1.0, hs["coarse_labels_weight"]],
                  metrics=[["accuracy"], ["accuracy"]])
    return model


def map_fn_flip():
    """The original's augmentation, as a layer: each image flipped left-right
    with probability 1/2, one image at a time. keras.ops.map is tf.map_fn
    under TensorFlow (what the original called) and jax.lax.map under JAX."""
    import keras
    from keras import ops

    class MapFnFlip(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed = keras.random.SeedGenerator(0)

        def call(self, images, training=None):
            if not training:
                return images
            coins = keras.random.uniform(ops.shape(images)[:1], seed=self.seed)
            return ops.map(lambda pair: ops.where(pair[1] < 0.5, ops.flip(pair[0], axis=1),
                                                  pair[0]), (images, coins))
    return MapFnFlip()
