"""Stage 2 data: pairs of completions, people's labels on them (SQLite), and preference datasets in and out."""

from workbench.preferences.io import (
    ImportReport,
    PreferenceImportError,
    RowError,
    export_preferences,
    import_preferences,
    to_csv,
    to_jsonl,
    to_parquet,
)
from workbench.preferences.pairs import PairConfig, PairDraft, make_pairs, stream_pair
from workbench.preferences.ranking_io import export_ranking_pairs, import_rankings
from workbench.preferences.rankings import Ranking, RankingSet, RankingStore, make_ranking_sets
from workbench.preferences.schema import CHOICES, UNDO, Label, Pair
from workbench.preferences.store import PreferenceStore, cohens_kappa

__all__ = [
    "CHOICES", "UNDO", "PairConfig", "PairDraft", "make_pairs", "stream_pair", "ImportReport", "Label", "Pair", "PreferenceImportError", "PreferenceStore", "RowError",
    "cohens_kappa", "export_preferences", "import_preferences", "to_csv", "to_jsonl", "to_parquet",
    "Ranking", "RankingSet", "RankingStore", "export_ranking_pairs", "import_rankings", "make_ranking_sets",
]
