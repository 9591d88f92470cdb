"""A loop of your own: the meta-test helpers exported from mometas_utils."""

import inspect


def test_the_meta_test_names_are_exported_as_functions():
    import mometas_utils.meta_test  # noqa: F401  the submodule first: its name must not replace the function's
    from mometas_utils import Advantage, encoder_grad_norm, meta_test, meta_test_batches, reward_terms

    assert inspect.isfunction(meta_test) and inspect.isfunction(meta_test_batches)
    assert inspect.isfunction(reward_terms) and inspect.isfunction(encoder_grad_norm) and inspect.isclass(Advantage)
