"""Source-task selection (TaskWeb, Kim et al., 2023): the embedded TaskWeb numbers (`taskweb`),
measured transfer files (`transfer`), few-example estimators F (`estimators`), TaskShop
(`taskshop`), ranking metrics (`ranking`) and `recross taskshop` (`taskshop_cli`)."""
