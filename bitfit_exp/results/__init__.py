"""Results: run records and their settings (`records`), the environment a record stamps (`environment`), choosing
the best lr within one protocol (`selection`), the paper's tables (`tables`) and reference numbers (`reference`),
figures (`analysis` computes, `figures` draws), comparing two runs dirs (`compare`) and display labels
(`labels`)."""
