"""Demo workflows that show a whole VM at work; ``avm demo`` runs them.

Each workflow is ordinary user code written against the public API (``import avm``), so it
doubles as an example of how a fleet is built: tools, prompts, models, agents, and a host loop.
"""

from avm.demo.portfolio import PortfolioConfig, PortfolioResult, run_portfolio

__all__ = ["PortfolioConfig", "PortfolioResult", "run_portfolio"]
