# bash completion for lora-merge(1)
_lora_merge()
{
	local cur prev
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	case $prev in
	--method)
		COMPREPLY=($(compgen -W "lorahub linear svd ties dare magnitude mean" -- "$cur"))
		return ;;
	--config)
		COMPREPLY=($(compgen -f -- "$cur"))
		return ;;
	--sign)
		COMPREPLY=($(compgen -W "total frequency" -- "$cur"))
		return ;;
	-w|--weights|--rank|--density|--seed|--name)
		return ;;
	esac
	COMPREPLY=($(compgen -W "--method --weights --config --rank --density --sign --seed --name --verbose --help --version" -- "$cur"))
}
complete -F _lora_merge lora-merge
