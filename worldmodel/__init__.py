"""The world model, in three rooms that import one way: perception -> dynamics -> dream.

    perception/   the vision encoder and how it learns alone: ViT, multi-block masks, I-JEPA, image sources,
                  augmentation, probes
    dynamics/     the latent world model (encoder -> z, recurrent h, reward / continue / ensemble heads), SIGReg,
                  the decoder for pictures, the metrics beside their baselines
    dream/        the world model as a batched latent environment, and its gymnasium (vector) env view
    schedules.py  schedules as pure functions of the step (learning rate, EMA momentum), shared by both trainers

Arrays are batch-major, `(B, T, ...)` at every API boundary. Shape letters, one meaning each across the code:

    B    batch: windows of the episode store, or images
    T    time steps of a window
    L    transitions of an episode (it holds L + 1 observations)
    U    unrolled steps: the open-loop, dream and planning horizon
    O    open-loop start points in a window
    C    image channels
    H W  image height and width (a square image has H = W)
    Np   patch tokens of an image, Np = (H / patch)^2; Nc of them in the context, Nt in each target block
    M    target blocks per image (I-JEPA's M)
    V    ViT token width
    F    encoder features of one frame: the world model's input, a probe's input
    D    latent z
    X    what a controller sees, [z, h]: X = D + hidden_dim (the width of h is written out as hidden_dim)
    A    action dims (a discrete action is a one-hot vector of A)
    S    true low-dimensional state
    K    ensemble members
    P    candidates: the CMA-ES population, or the action sequences a planner samples per env
    E    episodes per candidate, or of a store
    N    rows: leading dims flattened into one (B*T steps, P*E rollouts, a vector env's sub-envs, probe samples)
    R    rows of a rollout still going
    Q    start states in a pool a dream env draws from
    n    parameters of one controller (the CMA-ES dimension)
    k    steps ahead of an open-loop prediction (`pred_error_k{k}`)
    I    systems in a batch of fractals (perception/data.py)
A count used in one function only is written as a word (`chains`, `cells`, `heads`).
"""
