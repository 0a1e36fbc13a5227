"""The seed papers: what each reports, and the protocol `facefill reproduce` scores it with.

This is the one place that holds the papers' numbers. Each reported value names its source;
where the table number was not available offline, ``source`` says where the number was taken
from instead of guessing one. The data sets are prepared from ``../shared/data`` with
``facefill prepare`` (``DATASETS`` holds the arguments).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reported:
    """Numbers a paper reports for its method (or an ablation ``variant``) on one mask kind."""
    method: str                        # facefill's method name
    masks: str                         # facefill's mask kind (DATA/masks/<kind>/)
    metrics: dict                      # metric key (engine.evaluate.METRICS) -> value
    source: str                        # paper and table
    variant: str = ""                  # "" = the paper's main model; else an ablation, not shipped
    config: str = ""                   # configs/<name>.toml that trains the variant


@dataclass(frozen=True)
class DataSpec:
    """A prepared data set of the protocols: ``facefill prepare SHARED/<source> ROOT/<folder> ...``."""
    folder: str                        # folder name under --data-root
    source: str                        # relative to ../shared/data
    size: int
    crop: str
    masks: tuple[str, ...]
    identities: str | None = None      # relative to ../shared/data: identity-disjoint split


@dataclass(frozen=True)
class Paper:
    key: str                           # --paper value
    title: str
    method: str                        # facefill's implementation of the paper's model
    data: str                          # a DATASETS key
    masks: tuple[str, ...]
    methods: tuple[str, ...]           # scored, in table order (the paper's method first)
    metrics: tuple[str, ...]           # table columns, keys of engine.evaluate.METRICS
    protocol: str                      # the paper's protocol, for the table's header
    reported: tuple[Reported, ...] = ()
    limit: int | None = None           # default sample (slow methods); None = the whole test split
    sharpest: float | None = None      # score only this fraction of the test split, sharpest first
    notes: tuple[str, ...] = field(default_factory=tuple)


IDENTITIES = "celeba-aligned/identities.csv"

DATASETS = {
    "celeba128": DataSpec("data128", "celeba-aligned", 128, "celeba",
                          ("center", "random-box", "irregular", "random"), IDENTITIES),
    "celeba64": DataSpec("data64", "celeba-aligned", 64, "celeba", ("center", "irregular"), IDENTITIES),
    "celebahq256": DataSpec("datahq256", "celeba-hq/images", 256, "center", ("center", "random", "irregular")),
}

LIN = "Lin et al., face inpainting with a two-stage GAN and an LSTM"
MENG = "Meng et al., dense-convolution GAN for face inpainting"
DDPM_FFC = "DDPM with fast Fourier convolutions for face inpainting"
# Where the numbers were copied from: the table numbers of the papers were not at hand offline.
FROM_README = "as stated in shared/data/README.md (Reference settings) and issue 15"
FROM_RESULTS = "the paper's stage ablation, as recorded in weights/RESULTS.md"

PAPERS = (
    Paper(
        key="two-stage", title=LIN, method="two-stage-gan", data="celeba128", masks=("center",),
        methods=("two-stage-gan", "telea"), metrics=("psnr", "ssim"), sharpest=0.1,
        protocol=("CelebA at 128 px, the 10,000 sharpest images by the variance of the Laplacian "
                  "(8,000 train / 2,000 test), centre 64x64 hole, PSNR and SSIM over the whole image"),
        reported=(
            Reported("two-stage-gan", "center", {"psnr": 26.51, "ssim": 0.88}, f"{LIN}; {FROM_README}",
                     variant="", config="two-stage-gan"),
            Reported("two-stage-gan", "center", {"psnr": 21.45}, f"{LIN}; {FROM_RESULTS}",
                     variant="1 stage", config="two-stage-gan-stages1"),
            Reported("two-stage-gan", "center", {"psnr": 25.82}, f"{LIN}; {FROM_RESULTS}",
                     variant="3 stages", config="two-stage-gan-stages3"),
        ),
        notes=("facefill scores the sharpest 10 % of its identity-disjoint CelebA test split (the paper "
               "kept the sharpest 4.9 % of CelebA; 10 % of 1,020 faces keeps the mean's standard error "
               "near 0.25 dB).",)),
    Paper(
        key="dense-gan", title=MENG, method="dense-gan", data="celeba64", masks=("center",),
        methods=("dense-gan", "context-encoder", "autoencoder", "telea"), metrics=("psnr", "ssim", "l2"),
        protocol=("CelebA faces cropped to 64x64, centre hole, PSNR, SSIM and the mean L2 loss "
                  "(% of the value range, over the hole)"),
        reported=(Reported("dense-gan", "center", {"psnr": 23.31, "ssim": 0.795, "l2": 2.74},
                           f"{MENG}; {FROM_README}", config="dense-gan"),),
        notes=("The context encoder and the autoencoder are the baselines the paper compares with.",)),
    Paper(
        key="ddpm-ffc", title=DDPM_FFC, method="ddpm-ffc", data="celebahq256", masks=("center", "random"),
        methods=("ddpm-ffc", "telea"), metrics=("psnr", "ssim"), limit=25,
        protocol=("CelebA-HQ at 256 px, a centre mask of 25 % of the area and random masks of 20-30 %, "
                  "PSNR and SSIM"),
        reported=(Reported("ddpm-ffc", "center", {"psnr": 24.93, "ssim": 0.882}, f"{DDPM_FFC}; {FROM_README}",
                           config="ddpm-ffc-256"),
                  Reported("ddpm-ffc", "random", {"psnr": 25.01, "ssim": 0.886}, f"{DDPM_FFC}; {FROM_README}",
                           config="ddpm-ffc-256")),
        notes=("A model of another native size is filled at its size and scaled back to 256 px by the "
               "evaluation's one fill path.",)),
    Paper(
        key="wgan", title="Yeh et al., semantic inpainting by latent optimisation under a GAN prior",
        method="wgan", data="celeba64", masks=("center",), methods=("wgan", "telea"),
        metrics=("psnr", "ssim"), limit=25,
        protocol="CelebA at 64x64, centre hole; the paper's results are qualitative (no table to match)",
        notes=("No paper numbers: facefill's own, with Telea beside.",)),
    Paper(
        key="glcic", title="Iizuka et al., globally and locally consistent image completion",
        method="glcic", data="celeba128", masks=("center", "random-box"), methods=("glcic", "telea"),
        metrics=("psnr", "ssim"), limit=100,
        protocol=("random rectangular holes; the faces results (CelebA, fine-tuned) are qualitative "
                  "(no table to match)"),
        notes=("No paper numbers: facefill's own, with Telea beside.",)),
)

PAPER_KEYS = tuple(paper.key for paper in PAPERS)


def get_paper(key: str) -> Paper:
    for paper in PAPERS:
        if paper.key == key:
            return paper
    raise ValueError(f"unknown paper {key!r}; known: {', '.join(PAPER_KEYS)}, all")


def select_papers(text: str) -> tuple[Paper, ...]:
    """``all`` or a comma-separated list of paper keys, in the order given."""
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        raise ValueError(f"--paper needs a value: {', '.join(PAPER_KEYS)} or all")
    if "all" in keys:
        return PAPERS
    return tuple(get_paper(key) for key in dict.fromkeys(keys))
