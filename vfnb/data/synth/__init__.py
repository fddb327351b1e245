"""SynthSpine: the embedded default dataset, synthetic spine CTs with Genant-graded fractures.

SYNTHETIC DATA. Every scan is drawn from a hand-built geometric model of the
thoracolumbar spine (STUDY §3-4); no patient data is involved. What is modelled:

- a run of ``min_vertebrae``-``max_vertebrae`` consecutive vertebrae between T4 and L5
  (rarely a T13, label 28, or an L6, label 25), placed along a curve with thoracic
  kyphosis and lumbar lordosis, so every vertebra is tilted;
- each vertebra: a waisted, kidney-shaped body with a cortical shell, endplates with a
  physiological central concavity of varying depth and a textured trabecular interior;
  pedicles, laminae, spinous, transverse and articular processes, a spinal canal;
  intervertebral discs; ribs (not labelled) at thoracic levels;
- a body contour: paraspinal / psoas muscle, subcutaneous and retroperitoneal fat,
  mediastinal soft tissue, lungs beside the thoracic spine, air behind the back; the
  surroundings of a real scan (:mod:`.surroundings`): aorta anterior-left (sometimes
  calcified), inferior vena cava, kidneys in perirenal fat, bowel gas; the spinal
  canal holds epidural fat and CSF (0-20 HU);
- sizes by level and sex (women ~8 % smaller) with individual and level-to-level
  variation of height, depth and width;
- normal variation as in real spines (the config's "v2 shape" block): physiological
  anterior wedging at the thoracolumbar junction (a normal T11-L1 Ha/Hp down to about
  0.8), thoracic wedging up to ~15 %, endplate concavities of varying depth (some
  normals biconcave-looking within normal limits), a few short-bodied normals and a few
  mildly degenerative ones (anterior narrowing, endplate sclerosis and irregularity).
  So a normal vertebra's own heights may look deformed against a population
  reference, as in real spines, and height ratios alone misgrade some normals;
- per-patient bone density class (normal / osteopenic / osteoporotic) setting the
  trabecular HU for a screening cohort (L1 ~155 / 128 / 105 HU, wide and overlapping,
  with a per-patient offset, so low density predicts a fracture only moderately), with
  fine texture and coarse patchiness; cortical, disc, muscle, fat, lung and air HU;
  partial-volume sampling, a Gaussian point-spread blur and noise (sigma 10-40 HU) with
  a reconstruction kernel's grain (white noise smoothed in-plane); int16 HU;
- two label maps per scan: ``seg/`` in a segmentation model's style (about a millimetre
  generous, an irregular boundary, now and then bleeding into a disc: :mod:`.labelmaps`),
  the one the study trains on and the kind users bring; ``seg_exact/`` the exact map
  the grades and truth heights were drawn on;
- scanner geometry: in-plane 0.6-1.0 mm, slices 1-3 mm; headers in RAS, LPS, permuted
  and slightly oblique orientations (the anatomy is defined in world millimetres and
  sampled through the header's affine, so the label map is right in world space);
- fractures: the Genant grade follows from the deformity against the vertebra's own
  pre-fracture heights (grade 1 20-25 %, grade 2 25-40 %, grade 3 40-60 %), as wedge,
  biconcave or crush. Fractured endplates carry faint non-height signs whose strength
  is set per grade (:mod:`.fracture_signs`: endplate irregularity and step, a denser
  compaction band beneath the endplate, missing in a share of fractures, anterior
  cortical buckling); at grade 1 they are about a voxel in size. Normal vertebrae may
  carry a sub-threshold deformity (< 15 %) without those signs. Fractures are more
  likely at T12-L1 and T7-T8, in osteoporotic patients, and cluster in frail patients;
- no intensity shortcut: no single intensity statistic of a vertebra (trabecular core
  median, its SD, the endplate band; :mod:`.statistics`) is meant to separate
  fractured from normal vertebrae well (a test bounds each ROC AUC at 0.70); lower
  trabecular HU goes with fractures, moderately;
- an optional fracture-enriched test cohort (cases ``synth-s<seed>-t<k>``, drawn with
  ``test_fracture_rate`` and ``test_grade_mix``), which the study's default dataset adds
  to every test list so that grade 1 is numerous enough to measure; PPV and NPV on such
  a test set are not population values;
- an optional fracture-enriched validation cohort (cases ``synth-s<seed>-v<k>``, drawn
  like the test cohort from a stream of its own), which the default dataset adds to
  every validation list, so that model selection rests on more than a few fractures.

Not modelled: metal, degenerative disease beyond mild endplate changes (osteophytes, disc degeneration), other
pathology (tumours, infection), contrast agent, scanner artefacts beyond noise and
blur (no beam hardening, streaks, ring or motion artefacts), organs beyond crude
tissue classes and the few structures above, scoliosis.

How close it comes to real CT: ``vfnb synth realism`` (:mod:`.realism`), against the
ranges of :mod:`.reference_ranges`.

Determinism: case ``k`` is a function of ``(seed, k, config)`` only (its random
generator is ``np.random.default_rng([seed, k])``, ``[seed, k, 1]`` for the test cohort's
case ``k``), so case ``k`` is byte-identical whatever ``cases`` is; gzip output is
deterministic (no mtime, no file name).

Modules: :mod:`.config` (settings and anatomy tables), :mod:`.patient` (the run of
vertebrae, sizes, normal variants, density, fractures), :mod:`.fracture_signs` (the
non-height signs of a fracture and their look-alikes), :mod:`.statistics` (per-vertebra
intensity statistics from an image and its label map), :mod:`.geometry` (distances, the spine's curve,
the sampling grid), :mod:`.drawing` (soft tissue, discs, vertebrae into HU),
:mod:`.surroundings` (aorta, vena cava, kidneys, bowel gas), :mod:`.labelmaps` (the
segmenter-style label map),
:mod:`.scan` (one case: geometry, scanner, orientation, truth), :mod:`.dataset` (many
cases on disk, and the study's default dataset). This file only re-exports.
"""

from .config import DENSITY_CLASSES, GENERATOR_VERSION, HEIGHT_POSITIONS, MORPHOLOGIES, ORIENTATIONS, SynthConfig
from .dataset import (EXACT_SEG_DIR, META_FILE, PROCESSED_MARKER, TRUTH_COLUMNS, TRUTH_FILE, default_dataset_paths,
                      ensure_default_dataset, ensure_generated, ensure_processed, generate_dataset)
from .patient import sample_patient
from .scan import SynthCase, case_id, generate_case

__all__ = ["DENSITY_CLASSES", "EXACT_SEG_DIR", "GENERATOR_VERSION", "HEIGHT_POSITIONS", "META_FILE", "MORPHOLOGIES", "ORIENTATIONS",
           "PROCESSED_MARKER", "SynthCase", "SynthConfig", "TRUTH_COLUMNS", "TRUTH_FILE", "case_id",
           "default_dataset_paths", "ensure_default_dataset", "ensure_generated", "ensure_processed",
           "generate_case", "generate_dataset", "sample_patient"]
