-- Defines :Cerebrum before setup() runs, so lazy-loading plugin managers can load
-- the plugin on the command. The client itself starts only from setup().
if vim.g.loaded_cerebrum then
  return
end
vim.g.loaded_cerebrum = true
require('cerebrum').create_command()
