"""SparseML-format recipes: loading, safe expressions, modifiers and the training manager.

Model-agnostic: imports only ``sparseyolo.utils``, ``sparseyolo.sparsity`` and (lazily, when QAT
starts) ``sparseyolo.quantization``.
"""

from sparseyolo.recipe.expressions import resolve_variables, safe_eval
from sparseyolo.recipe.manager import RecipeManager
from sparseyolo.recipe.modifiers import MODIFIERS, Modifier
from sparseyolo.recipe.modifiers.quantization import restore_qat_structure
from sparseyolo.recipe.recipe import Recipe, parse_recipe_args

__all__ = [
    "MODIFIERS",
    "Modifier",
    "Recipe",
    "RecipeManager",
    "parse_recipe_args",
    "resolve_variables",
    "restore_qat_structure",
    "safe_eval",
]
